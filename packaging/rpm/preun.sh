# %preun: $1 is 0 on removal, 1 or more on upgrade. On removal, stops and
# disables the agent; the pods keep running under containerd.
if [ "$1" -eq 0 ] && command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now podkeeper.service >/dev/null 2>&1 || :
    else
        systemctl --no-reload disable podkeeper.service >/dev/null 2>&1 || :
    fi
fi
