#!/bin/sh
# Runs inside the golden image's rootfs (under systemd-nspawn) while it is built.
# Part of the image hash: editing this file rebuilds the image on the next `lab sandbox up`.
# Input in /opslab-build/: packages.txt (the package list without comments), authorized_keys (the
# control host's lab key). Network: the build host's.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

step() { echo "opslab-step: $*"; }

step "apt sources"
cat > /etc/apt/sources.list <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# Nothing starts while the image is built (pitfall 8); the builder removes this file afterwards.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
apt-get -q update

step "security updates"
apt-get -q -y upgrade

step "install packages"
# shellcheck disable=SC2046
apt-get -q -y install --no-install-recommends $(cat /opslab-build/packages.txt)

step "configure"
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen
locale-gen
# Logins must not wait for user@0.service to stop (pitfall 1).
pam-auth-update --disable systemd
# Every host gets its own SSH host keys at first start (pitfall 5).
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/opslab-hostkeys.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
# The docker lab host remounts its cgroup v1 controllers read-write before containerd/docker
# start; the sandbox enables this unit only on hosts with the docker feature.
cat > /usr/local/sbin/opslab-cgroup-rw <<'SCRIPT'
#!/bin/sh
# Remount every cgroup v1 controller mount read-write (nspawn mounts them read-only).
awk '$3 == "cgroup" {print $2}' /proc/self/mounts | while read -r mnt; do
    mount -o remount,bind,rw "$mnt"
done
SCRIPT
chmod 0755 /usr/local/sbin/opslab-cgroup-rw
cat > /etc/systemd/system/opslab-cgroup-rw.service <<'UNIT'
[Unit]
Description=Remount cgroup v1 controllers read-write for Docker
DefaultDependencies=no
After=local-fs.target
Before=containerd.service docker.service docker.socket sysinit.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/opslab-cgroup-rw

[Install]
WantedBy=sysinit.target
UNIT
# Services enable themselves on install (pitfall 9): the roles enable what each host needs.
for unit in nginx.service keepalived.service mariadb.service docker.service docker.socket \
    containerd.service exim4.service e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer \
    man-db.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer; do
    if systemctl list-unit-files --no-legend "$unit" | grep -q .; then systemctl disable "$unit"; fi
done
systemctl mask systemd-firstboot.service
systemctl enable systemd-networkd.service

step "clean"
apt-get clean
apt-cache gencaches
rm -rf /var/log/apt/* /var/log/dpkg.log

step "finish"
# Nothing of the build host's identity stays (pitfall 6); each host gets its name at boot.
: > /etc/machine-id
ln -sf /etc/machine-id /var/lib/dbus/machine-id
: > /etc/hostname
: > /etc/resolv.conf
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > /etc/hosts
install -d -m 0700 /root/.ssh
install -m 0600 /opslab-build/authorized_keys /root/.ssh/authorized_keys
rm -f /usr/sbin/policy-rc.d
