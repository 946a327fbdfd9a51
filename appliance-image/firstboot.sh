#!/usr/bin/env bash
# Puts a first-boot config onto a disk image's data partition, for unattended installs: the
# appliance applies it at its first boot as it would a seed disk's (appliance-image/README.md).
#
#   appliance-image/firstboot.sh IMAGE DIR
#
# IMAGE is a raw disk image made by `build.sh disk` (or a copy), never booted yet; DIR holds
# seed.conf and/or tether.toml (the seed disk's tether-seed/ layout). Nothing is mounted: the
# data partition is copied out, changed with debugfs, and copied back.
set -euo pipefail
image=${1:-} dir=${2:-}
[ -f "$image" ] && [ -d "$dir" ] || { echo "usage: $0 IMAGE DIR" >&2; exit 2; }
[ -f "$dir/seed.conf" ] || [ -f "$dir/tether.toml" ] || { echo "$0: $dir holds neither seed.conf nor tether.toml" >&2; exit 1; }
# The data partition is the fourth.
read -r start size < <(sfdisk -d "$image" | sed -n 's/.*4 : start= *\([0-9]*\), size= *\([0-9]*\).*/\1 \2/p')
[ -n "${start:-}" ] || { echo "$0: $image has no partition 4 (not a Tether disk image?)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dd if="$image" of="$work/data.img" bs=512 skip="$start" count="$size" status=none
[ "$(blkid -o value -s LABEL "$work/data.img")" = tether-data ] || { echo "$0: partition 4 is not the tether-data filesystem" >&2; exit 1; }
{
    echo "mkdir tether-seed"
    for f in seed.conf tether.toml; do
        [ -f "$dir/$f" ] && echo "write $dir/$f tether-seed/$f"
    done
    echo "set_inode_field tether-seed mode 040700"
} >"$work/cmds"
debugfs -w -f "$work/cmds" "$work/data.img" >/dev/null
debugfs -R "ls -l tether-seed" "$work/data.img" 2>/dev/null | grep -q seed.conf \
    || [ ! -f "$dir/seed.conf" ] || { echo "$0: writing the config failed" >&2; exit 1; }
dd if="$work/data.img" of="$image" bs=512 seek="$start" conv=notrunc status=none
echo "first-boot config from $dir written into $image's data partition (tether-seed/)"
