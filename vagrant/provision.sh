#!/bin/sh
# Provisioning of one node (vagrant/Vagrantfile): install the package, write
# this node's configuration from the one template, install the shared
# secret, start baton.service.
#   provision.sh ID NODES RING0 RING1 CLIENT
# With BATON_PROVISION_ROOT=DIR (`cargo xtask vagrant-validate`): only
# render DIR/etc/baton/baton.toml and the secret from DIR/tmp/, with the
# interfaces RING0_IF and RING1_IF from the environment; nothing installed
# or started.
set -eu
id=$1 nodes=$2 ring0=$3 ring1=$4 client=$5
host=$((10 + id))
root=${BATON_PROVISION_ROOT:-}

if [ -z "$root" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! command -v busybox >/dev/null; then
        apt-get update -q && apt-get install -y -q busybox
    fi
    apt-get install -y -q /tmp/baton.deb || dpkg -i /tmp/baton.deb
fi

install -d -m 0755 "$root/etc/baton"
install -m 0600 "$root/tmp/baton.secret" "$root/etc/baton/secret"

# The interface that holds an address of a network.
ifof() { ip -o -4 addr show | awk -v p="$1." 'index($4, p) == 1 { print $2; exit }'; }
r0if=${RING0_IF:-$(ifof "$ring0")}; r1if=${RING1_IF:-$(ifof "$ring1")}
[ -n "$r0if" ] && [ -n "$r1if" ] || { echo "provision: no interface on $ring0.0/24 or $ring1.0/24" >&2; ip -o addr >&2; exit 1; }

peers=""
for j in $(seq 1 "$nodes"); do
    [ "$j" = "$id" ] && continue
    peers="$peers[[peer]]\nid = $j\nname = \"node$j\"\naddresses = [\"$ring0.$((10 + j))\", \"$ring1.$((10 + j))\"]\n\n"
done
sed -e "s/@ID@/$id/g" -e "s/@HOST@/$host/g" -e "s/@RING0@/$ring0/g" -e "s/@RING1@/$ring1/g" \
    -e "s/@RING0_IF@/$r0if/g" -e "s/@RING1_IF@/$r1if/g" "$root/tmp/baton.toml.in" |
    awk -v peers="$peers" '{ if ($0 == "@PEERS@") printf "%s", peers; else print }' >"$root/etc/baton/baton.toml"
chmod 0644 "$root/etc/baton/baton.toml"
[ -n "$root" ] && exit 0

mkdir -p /srv/www
echo "node$id" >/srv/www/index.html

baton config check /etc/baton/baton.toml
systemctl enable --now baton
systemctl --no-pager status baton | head -5 || true
