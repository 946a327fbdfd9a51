#!/usr/bin/env bash
# Builds the appliance's images from the workspace's release `tether` binary.
#
#   appliance-image/build.sh minimal   Debian's kernel + an initramfs (busybox, tether, glibc):
#                                      OUT/minimal/{vmlinuz,initrd.img}; boots with qemu -kernel
#   appliance-image/build.sh iso       the same kernel and initramfs on a hybrid BIOS/UEFI ISO
#                                      (grub-mkrescue): OUT/iso/tether-appliance.iso
#
# OUT is ${CARGO_TARGET_DIR:-target}/appliance (never committed). The tether binary is
# ${CARGO_TARGET_DIR:-target}/release/tether, built first if missing (TETHER_BIN overrides).
# The kernel is the one Debian's linux-image-amd64 points at, fetched with `apt-get download`
# and unpacked into OUT/cache (kept between builds); KERNEL_DEB=FILE.deb uses a given package.
# Needs: apt, dpkg-deb, busybox-static, cpio, zstd, kmod (depmod), e2fsprogs; for `iso` also
# grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools (scripts/install-test-deps.sh).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=$TARGET/appliance
CACHE=$OUT/cache
started=$SECONDS
# Scratch space, removed on exit however the build ends.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

step() { echo "==> [appliance $(date +%H:%M:%S), $((SECONDS - started))s] $*"; }
die() { echo "build.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/sbin/$1" ] || [ -x "/usr/sbin/$1" ] \
    || die "$1 is missing (package $2; scripts/install-test-deps.sh installs it)"; }
# Prints an artifact's size and SHA-256, and records the checksum next to it.
report() {
    local f=$1
    local sum
    sum=$(sha256sum "$f" | cut -d' ' -f1)
    printf '%s  %s\n' "$sum" "$(basename "$f")" >>"$(dirname "$f")/SHA256SUMS"
    printf '    %-40s %10s bytes  sha256 %s\n' "${f#"$TARGET"/}" "$(stat -c %s "$f")" "$sum"
}

tether_binary() {
    TETHER_BIN=${TETHER_BIN:-$TARGET/release/tether}
    if [ ! -x "$TETHER_BIN" ]; then
        step "building the release binaries (cargo build --release --workspace --bins --tests --examples)"
        (cd "$REPO" && cargo build --release --workspace --bins --tests --examples --locked)
    fi
    [ -x "$TETHER_BIN" ] || die "no tether binary at $TETHER_BIN"
}

# Sets KROOT (the unpacked kernel package) and KVER.
kernel() {
    local deb
    if [ -n "${KERNEL_DEB:-}" ]; then
        deb=$KERNEL_DEB
    else
        local pkg
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
            | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
        [ -n "$pkg" ] || die "apt knows no linux-image-amd64 (run apt-get update)"
        mkdir -p "$CACHE/deb"
        deb=$(ls "$CACHE/deb/${pkg}"_*.deb 2>/dev/null | head -n 1 || true)
        if [ -z "$deb" ]; then
            step "downloading $pkg (apt-get download, not installed)"
            # apt's _apt user cannot write into root-only folders: download in a temp dir.
            local tmp=$WORK/download
            mkdir -p "$tmp" && chmod 0755 "$WORK" "$tmp"
            (cd "$tmp" && apt-get download -q "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
            mv "$tmp"/*.deb "$CACHE/deb/"
            deb=$(ls "$CACHE/deb/${pkg}"_*.deb | head -n 1)
        fi
    fi
    local name
    name=$(basename "$deb" .deb)
    KROOT=$CACHE/kernel/$name
    if [ ! -f "$KROOT/.unpacked" ]; then
        step "unpacking $(basename "$deb")"
        rm -rf "$KROOT" && mkdir -p "$KROOT"
        dpkg-deb -x "$deb" "$KROOT"
        touch "$KROOT/.unpacked"
    fi
    KVER=$(ls "$KROOT/lib/modules" | head -n 1)
    [ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "no vmlinuz-$KVER in $deb"
}

# The kernel modules the appliance loads: virtio (qemu, most hypervisors), common NICs and disk
# controllers of hypervisors and small boxes, ext4 for the data disk. Dependencies are added from
# modules.dep, in load order.
MODULES="virtio_pci virtio_net virtio_blk virtio-rng e1000 e1000e igb vmxnet3 ahci sd_mod nvme
    crc32c_generic crc32c-intel ext4"

initramfs() {
    local out=$1
    local w=$WORK/initramfs
    mkdir -p "$w"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,var/lib/tether,lib/modules}
    # busybox: the shell, init, udhcpc, mount and the rest, as links to one static binary.
    [ -x /bin/busybox ] && file_is_static /bin/busybox || die "/bin/busybox is missing or not static (package busybox-static)"
    cp /bin/busybox "$w/bin/busybox"
    local a
    for a in $("$w/bin/busybox" --list-full); do
        # The list holds busybox itself: linking it would replace the binary by a loop.
        [ "${a##*/}" = busybox ] || [ -e "$w/$a" ] || ln -s /bin/busybox "$w/$a"
    done
    ln -sf /bin/busybox "$w/init"
    cp -a "$HERE/minimal/etc/." "$w/etc/"
    echo "tether $("$TETHER_BIN" --version | awk '{print $2}') appliance (minimal, $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown))" \
        >"$w/etc/tether-appliance-version"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$w/etc/passwd"
    printf 'root:x:0:\n' >"$w/etc/group"
    # The release profile keeps line tables (for the tests' backtraces): not worth RAM here.
    if command -v strip >/dev/null 2>&1; then
        strip -o "$w/usr/bin/tether" "$TETHER_BIN" && chmod 0755 "$w/usr/bin/tether"
    else
        install -m 0755 "$TETHER_BIN" "$w/usr/bin/tether"
    fi
    # e2fsprogs' mke2fs formats the data disk at first boot (ext4 with a journal; busybox's applet
    # makes ext2 only). Named mkfs.ext4: busybox's shell runs its own applet for the name mke2fs.
    install -m 0755 "$(command -v mke2fs || echo /sbin/mke2fs)" "$w/usr/sbin/mkfs.ext4"
    cp /etc/mke2fs.conf "$w/etc/mke2fs.conf"
    # tether and mke2fs are linked to glibc: bring the shared libraries they load.
    local lib
    for lib in $(ldd "$TETHER_BIN" "$w/usr/sbin/mkfs.ext4" | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
        mkdir -p "$w$(dirname "$lib")"
        cp -L "$lib" "$w$lib"
    done
    # Modules, flat in /lib/modules, listed in load order for rcS.
    local md=$KROOT/lib/modules/$KVER
    [ -f "$md/modules.dep" ] || depmod -b "$KROOT" "$KVER"
    local order=() m
    add_module() {
        local line dep path
        line=$(grep -E "/$1\.ko(\.[a-z]+)?:" "$md/modules.dep") || die "kernel $KVER has no module $1"
        for dep in ${line#*:}; do
            dep=$(basename "$dep")
            add_module "${dep%%.ko*}"
        done
        path=${line%%:*}
        [[ " ${order[*]} " == *" $path "* ]] || order+=("$path")
    }
    for m in $MODULES; do add_module "$m"; done
    : >"$w/etc/modules.order"
    local p base
    for p in "${order[@]}"; do
        base=$(basename "$p")
        case $base in
        *.ko.xz) xz -dc "$md/$p" >"$w/lib/modules/${base%.xz}"; base=${base%.xz} ;;
        *.ko.zst) zstd -qdc "$md/$p" >"$w/lib/modules/${base%.zst}"; base=${base%.zst} ;;
        *) cp "$md/$p" "$w/lib/modules/$base" ;;
        esac
        echo "$base" >>"$w/etc/modules.order"
    done
    (cd "$w" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) \
        | zstd -9 -T0 -q >"$out"
}

file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

build_minimal() {
    need apt-get apt; need dpkg-deb dpkg; need cpio cpio; need zstd zstd; need depmod kmod; need mke2fs e2fsprogs
    tether_binary
    kernel
    local dir=$OUT/minimal
    mkdir -p "$dir"
    rm -f "$dir/SHA256SUMS"
    step "initramfs: busybox, $(basename "$TETHER_BIN") ($(stat -c %s "$TETHER_BIN") bytes) and glibc, kernel $KVER's modules"
    cp "$KROOT/boot/vmlinuz-$KVER" "$dir/vmlinuz"
    initramfs "$dir/initrd.img"
    step "minimal image ready in $((SECONDS - started))s (boot: see appliance-image/README.md)"
    report "$dir/vmlinuz"
    report "$dir/initrd.img"
}

build_iso() {
    need grub-mkrescue grub-common; need xorriso xorriso; need mcopy mtools
    [ -d /usr/lib/grub/i386-pc ] || die "GRUB's BIOS modules are missing (package grub-pc-bin)"
    [ -d /usr/lib/grub/x86_64-efi ] || die "GRUB's UEFI modules are missing (package grub-efi-amd64-bin)"
    build_minimal
    local dir=$OUT/iso
    local w=$WORK/iso
    mkdir -p "$dir" "$w/boot/grub"
    rm -f "$dir/SHA256SUMS"
    cp "$OUT/minimal/vmlinuz" "$OUT/minimal/initrd.img" "$w/boot/"
    cp "$HERE/iso/grub.cfg" "$w/boot/grub/grub.cfg"
    step "ISO: grub-mkrescue (BIOS and UEFI)"
    grub-mkrescue -o "$dir/tether-appliance.iso" "$w" -- -volid TETHER 2>/dev/null \
        || grub-mkrescue -o "$dir/tether-appliance.iso" "$w" -- -volid TETHER
    step "ISO ready in $((SECONDS - started))s"
    report "$dir/tether-appliance.iso"
}

case ${1:-} in
minimal) build_minimal ;;
iso) build_iso ;;
*)
    echo "usage: $0 minimal|iso   (see appliance-image/README.md)" >&2
    exit 2
    ;;
esac
