# %post: $1 is 1 on install, 2 or more on upgrade. Creates the podkeeper
# system group and the directories, and enables the service on first install
# without starting it; the restart on upgrade is in %postun, once the old
# files are gone.
# Members of the group may enter the state directory (0710) and read the
# agent's kubeconfig (0640), nothing else in it. No packaged file belongs to
# the group, so %post is early enough.
getent group podkeeper >/dev/null || groupadd -r podkeeper
# The modes of tmpfiles.d/podkeeper.conf (which re-applies them at boot),
# made here directly so that no systemd tool is needed. install -d only sets
# modes: the PKI, admin token and kubeconfig inside the state directory are
# kept across upgrades.
install -d -m 0755 -o root -g root /etc/podkeeper/manifests
install -d -m 0710 -o root -g podkeeper /var/lib/podkeeper
install -d -m 0700 -o root -g root /var/lib/podkeeper/images
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ] && command -v systemctl >/dev/null 2>&1; then
    # Works without a running systemd too: it only writes the symlinks.
    systemctl --no-reload enable podkeeper.service >/dev/null 2>&1 || :
fi
