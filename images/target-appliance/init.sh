#!/bin/sh
# init of the standin target appliance: the small system a standby machine
# runs until it takes over. Brings up the network and runs
#   standin target serve --listen $LISTEN --state-dir $STATE_DIR \
#       --identity $IDENTITY --trust $TRUST
# Settings come from /etc/standin/init.conf (the recipe's [init.env]).
# Prints STANDIN-APPLIANCE-READY once serve listens, or
# STANDIN-APPLIANCE-FAILED with the reason.
PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin
export PATH

[ -r /proc/mounts ] || mount -t proc proc /proc
mounted() { grep -q " $1 " /proc/mounts; }
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mounted /run || mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/shm /tmp

AFTER=stay
LISTEN=0.0.0.0:6320
STATE_DIR=/var/lib/standin
IDENTITY=/etc/standin/identity
TRUST=
ADDRESS=10.0.2.15/24
GATEWAY=10.0.2.2
[ -r /etc/standin/init.conf ] && . /etc/standin/init.conf

[ -r /etc/hostname ] && hostname "$(cat /etc/hostname)"

fail() {
    echo "STANDIN-APPLIANCE-FAILED host=$(hostname): $*"
    [ -r /var/log/standin-serve.log ] && tail -n 20 /var/log/standin-serve.log
}

# Network: loopback and the first other interface (qemu user networking
# gives the guest 10.0.2.15/24 with the gateway at 10.0.2.2).
ip link set lo up
iface=
for i in 1 2 3 4 5 6 7 8 9 10; do
    iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
    [ -n "$iface" ] && break
    sleep 1
done
if [ -n "$iface" ]; then
    ip addr add "$ADDRESS" dev "$iface"
    ip link set "$iface" up
    ip route add default via "$GATEWAY" 2>/dev/null
    echo "standin appliance: $iface $ADDRESS"
else
    echo "standin appliance: no network interface"
fi

start_serve() {
    if [ -z "$TRUST" ]; then
        fail "TRUST is not set in /etc/standin/init.conf; rebuild with --init-env TRUST=sha256:<source fingerprint>"
        return
    fi
    if ! command -v standin >/dev/null; then
        fail "the standin binary is missing"
        return
    fi
    if [ ! -d "$IDENTITY" ] || [ -z "$(ls -A "$IDENTITY" 2>/dev/null)" ]; then
        if ! standin keys init --dir "$IDENTITY" > /var/log/standin-keys.log 2>&1; then
            cat /var/log/standin-keys.log
            fail "standin keys init failed"
            return
        fi
        echo "standin appliance: identity $(tail -n 1 /var/log/standin-keys.log)"
    fi
    standin target serve --listen "$LISTEN" --state-dir "$STATE_DIR" \
        --identity "$IDENTITY" --trust "$TRUST" > /var/log/standin-serve.log 2>&1 &
    serve=$!
    port=${LISTEN##*:}
    for i in $(seq 1 120); do
        if netstat -ltn 2>/dev/null | grep -q ":$port "; then
            echo "STANDIN-APPLIANCE-READY host=$(hostname) listen=$LISTEN"
            return
        fi
        kill -0 "$serve" 2>/dev/null || break
        sleep 1
    done
    fail "standin target serve is not listening on $LISTEN"
}

mkdir -p "$STATE_DIR" /var/log
start_serve

if [ "$AFTER" = poweroff ]; then
    sync
    poweroff -f
fi
while :; do
    sleep 3600 &
    wait
done
