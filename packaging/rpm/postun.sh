# %postun: $1 is 0 on removal, 1 or more on upgrade. On upgrade, restarts the
# agent if it runs (the pods keep running; the new agent adopts them). RPM has
# no purge: /var/lib/podkeeper (the PKI, admin token and kubeconfig included)
# stays, as RPM leaves data behind, and so does the podkeeper group, as
# Fedora's packaging guidelines ask of system groups.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart podkeeper.service >/dev/null 2>&1 || :
    fi
fi
