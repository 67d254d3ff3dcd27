# %post: $1 is 1 on install, 2 or more on upgrade. Creates the directories
# and enables the service on first install without starting it; the restart
# on upgrade is in %postun, once the old files are gone.
# The modes of tmpfiles.d/podkeeper.conf (which re-applies them at boot),
# made here directly so that no systemd tool is needed.
install -d -m 0755 -o root -g root /etc/podkeeper/manifests
install -d -m 0700 -o root -g root /var/lib/podkeeper /var/lib/podkeeper/images
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    # Works without a running systemd too: it only writes the symlinks.
    systemctl --no-reload enable podkeeper.service >/dev/null 2>&1 || :
fi
