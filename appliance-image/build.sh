#!/usr/bin/env bash
# Builds the appliance's images from the workspace's release `tether` binary.
#
#   appliance-image/build.sh minimal   Debian's kernel + an initramfs (busybox, tether, glibc):
#                                      OUT/minimal/{vmlinuz,initrd.img}; boots with qemu -kernel
#   appliance-image/build.sh iso       the same kernel and initramfs on a hybrid BIOS/UEFI ISO
#                                      (grub-mkrescue): OUT/iso/tether-appliance.iso
#   appliance-image/build.sh disk      a Debian 12 disk image (debootstrap, systemd), read-only
#                                      root in slot A (slot B for updates), a data partition grown
#                                      at first boot, BIOS (SYSLINUX) and UEFI (GRUB) boot, a setup
#                                      menu on the consoles: OUT/disk/tether-appliance.img (raw, sparse)
#   appliance-image/build.sh update-bundle   the disk image's root filesystem as a signed update
#                                      bundle for tether-update: OUT/update/tether-appliance.bundle
#                                      (the signing key: OUT/keys/, or UPDATE_SIGNING_KEY=FILE)
#   appliance-image/build.sh all       all four (what scripts/test.sh builds)
#   appliance-image/build.sh rootfs-cache   only the disk image's Debian root into OUT/cache
#                                      (downloads, no tether binary needed: scripts/test.sh runs
#                                      it beside the cargo build)
#
# OUT is ${CARGO_TARGET_DIR:-target}/appliance (never committed). The tether binary is
# ${CARGO_TARGET_DIR:-target}/release/tether, built first if missing (TETHER_BIN overrides).
# The kernel is the one Debian's linux-image-amd64 points at, fetched with `apt-get download`
# and unpacked into OUT/cache (kept between builds); KERNEL_DEB=FILE.deb uses a given package.
# SLOT_MIB=1280 sizes the disk image's root slots; UPDATE_ZSTD_LEVEL=9 the bundle's compression.
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
cleanup() {
    # The disk image's chroot has the host's /proc, /sys and /dev bound in while it upgrades:
    # unmount them before removing anything, and never cross into another filesystem.
    local m
    for m in dev sys proc; do
        mountpoint -q "$WORK/rootfs/$m" 2>/dev/null && { umount -R "$WORK/rootfs/$m" || umount -l "$WORK/rootfs/$m"; }
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

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

# The Debian root filesystem of the disk image, cached as a tarball keyed on its package list
# (debootstrap takes about two minutes, mostly downloads). Sets ROOTFS.
DISK_PACKAGES=systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,zstd,e2fsprogs,fdisk,iproute2,tar,openssl,curl
debian_rootfs() {
    local mirror key cached
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1)
    mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}
    key=$(echo "bookworm+updates+security one kernel $DISK_PACKAGES" | sha256sum | cut -c1-12)
    cached=$CACHE/rootfs-bookworm-$key.tar.zst
    ROOTFS=$WORK/rootfs
    # One build at a time makes the cache: another waits here, then takes the cached root.
    mkdir -p "$CACHE"
    exec 9>"$CACHE/rootfs.lock"
    if ! flock -n 9; then
        step "waiting for another build making the Debian root filesystem (the cache's lock)"
        flock 9
    fi
    if [ "${ROOTFS_CACHE_ONLY:-}" = 1 ] && [ -f "$cached" ]; then
        step "Debian root filesystem already cached ($(basename "$cached"))"
        return
    fi
    if [ ! -f "$cached" ]; then
        step "debootstrap bookworm from $mirror (about two minutes; cached afterwards)"
        debootstrap --variant=minbase --include="$DISK_PACKAGES" bookworm "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
        # debootstrap reads the release only: bring in the point-release and security updates
        # (the kernel among them; the release's kernel is then purged), with /proc, /sys and /dev
        # for the packages' scripts.
        step "upgrading the root filesystem from bookworm-updates and bookworm-security"
        local security
        security=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep security | head -n 1)
        security=${DEBIAN_SECURITY_MIRROR:-${security:-http://deb.debian.org/debian-security}}
        cat >"$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
        mount -t proc proc "$ROOTFS/proc" && mount --rbind /sys "$ROOTFS/sys" && mount --rbind /dev "$ROOTFS/dev"
        local upgraded=0
        chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
            'apt-get -q update && apt-get -q -y --purge dist-upgrade && apt-get -q -y --purge autoremove
             keep=$(dpkg-query -W -f="\${Depends}" linux-image-amd64 | cut -d" " -f1)
             old=$(dpkg-query -W -f="\${db:Status-Abbrev} \${Package}\n" "linux-image-[0-9]*" \
                 | awk -v keep="$keep" "\$1 == \"ii\" && \$2 != keep {print \$2}")
             [ -z "$old" ] || apt-get -q -y purge $old' \
            >>"$WORK/debootstrap.log" 2>&1 || upgraded=$?
        umount -R "$ROOTFS/dev" "$ROOTFS/sys" "$ROOTFS/proc" 2>/dev/null || umount -l "$ROOTFS/dev" "$ROOTFS/sys" "$ROOTFS/proc"
        [ "$upgraded" = 0 ] || { tail -n 20 "$WORK/debootstrap.log" >&2; die "upgrading the root filesystem failed"; }
        rm -rf "${ROOTFS:?}/var/cache/apt/archives/"*.deb "${ROOTFS:?}/var/lib/apt/lists/"*
        tar -C "$ROOTFS" --numeric-owner -cf - . | zstd -q -T0 >"$cached.tmp" && mv "$cached.tmp" "$cached"
        step "Debian root filesystem cached ($(basename "$cached"))"
    else
        step "Debian root filesystem from the cache ($(basename "$cached"))"
        mkdir -p "$ROOTFS"
        zstd -qdc "$cached" | tar -C "$ROOTFS" --numeric-owner -xf -
    fi
}

# MBR disk identifier: partitions are found as PARTUUID=7e7e7e01-0N (1 ESP, 2 slot A, 3 slot B,
# 4 data).
DISK_ID=0x7e7e7e01
# Each root slot's partition: room for a bigger root than today's (an update must fit it).
SLOT_MIB=${SLOT_MIB:-1280}
KERNEL_CMDLINE="ro console=tty0 console=ttyS0,115200 quiet panic=10"

# The update-signing key (Ed25519, OpenSSL): UPDATE_SIGNING_KEY=FILE names the private key, else
# it is OUT/keys/update-signing.key, made at the first build. Sets SIGNING_KEY and PUBLIC_KEY
# (what the image trusts).
signing_key() {
    need openssl openssl
    local keys=$OUT/keys
    if [ -n "${UPDATE_SIGNING_KEY:-}" ]; then
        SIGNING_KEY=$UPDATE_SIGNING_KEY
        [ -r "$SIGNING_KEY" ] || die "UPDATE_SIGNING_KEY=$SIGNING_KEY cannot be read"
    else
        SIGNING_KEY=$keys/update-signing.key
        if [ ! -f "$SIGNING_KEY" ]; then
            step "making an update-signing key (Ed25519) in $keys: keep it, bundles must be signed with it"
            mkdir -p "$keys" && chmod 0700 "$keys"
            (umask 077 && openssl genpkey -algorithm ed25519 -out "$SIGNING_KEY")
        fi
    fi
    PUBLIC_KEY=$WORK/update-signing.pub
    openssl pkey -in "$SIGNING_KEY" -pubout -out "$PUBLIC_KEY" 2>/dev/null \
        || die "$SIGNING_KEY is not a private key openssl reads"
    mkdir -p "$keys"
    cp "$PUBLIC_KEY" "$keys/update-signing.pub"
}

# The SHA-256 of a public key's DER form: what an operator compares.
key_fingerprint() { openssl pkey -pubin -in "$1" -outform DER 2>/dev/null | sha256sum | cut -c1-64; }

# The appliance's root filesystem (Debian, tether, the units, the update key), as an ext4 image
# for a root slot: sets ROOT_IMG, ROOT_VERSION and ROOT_KVER. The kernel and its initramfs stay in
# /boot (vmlinuz, initrd.img): tether-update copies a new slot's onto the ESP.
build_root() {
    [ -n "${ROOT_IMG:-}" ] && return 0
    need debootstrap debootstrap; need mkfs.ext4 e2fsprogs
    tether_binary
    signing_key
    debian_rootfs
    local r=$ROOTFS
    step "configuring the root filesystem (tether, systemd units, read-only root, update key)"
    strip -o "$r/usr/bin/tether" "$TETHER_BIN" && chmod 0755 "$r/usr/bin/tether"
    mkdir -p "$r/usr/lib/tether-appliance" "$r/usr/share/tether-appliance" "$r/etc/tether" "$r/var/lib/tether" \
        "$r/etc/systemd/network"
    sed 's|^# Shared by|# Shared by|' "$HERE/minimal/etc/init.d/functions" >"$r/usr/lib/tether-appliance/functions"
    for f in seed-apply seed-reply banner; do
        sed 's|\. /etc/init\.d/functions|. /usr/lib/tether-appliance/functions|' "$HERE/minimal/etc/init.d/$f" \
            >"$r/usr/lib/tether-appliance/$f"
    done
    install -m 0755 "$HERE/disk/tether-data" "$HERE/disk/slot-check" "$HERE/disk/menu" "$r/usr/lib/tether-appliance/"
    install -m 0644 "$HERE/disk/slots" "$r/usr/lib/tether-appliance/slots"
    install -m 0755 "$HERE/disk/tether-update" "$r/usr/sbin/tether-update"
    install -m 0644 "$PUBLIC_KEY" "$r/usr/share/tether-appliance/update-signing.pub"
    chmod 0755 "$r/usr/lib/tether-appliance/"seed-* "$r/usr/lib/tether-appliance/banner"
    cp "$HERE/minimal/etc/tether/default.toml" "$r/etc/tether/default.toml"
    cp "$HERE/disk/"*.service "$r/etc/systemd/system/"
    cp "$HERE/disk/20-wired.network" "$r/etc/systemd/network/"
    echo tether >"$r/etc/hostname"
    : >"$r/etc/machine-id"
    # The root is not in fstab: the kernel command line's root= (the booted slot) and `ro` say it.
    cat >"$r/etc/fstab" <<FSTAB
tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0
tmpfs /var/tmp tmpfs mode=1777,nosuid,nodev 0 0
tmpfs /var/log tmpfs mode=0755,nosuid,nodev 0 0
FSTAB
    mkdir -p "$r/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\n' >"$r/etc/systemd/journald.conf.d/volatile.conf"
    # The setup menu takes the serial console and tty1, in place of their login prompts.
    systemctl --root="$r" enable tether-data.service tether-seed.service tether-seed-reply.service tether.service \
        tether-banner.service tether-slot-check.service tether-menu@ttyS0.service tether-menu@tty1.service \
        systemd-networkd.service >/dev/null 2>&1
    systemctl --root="$r" mask systemd-networkd-wait-online.service getty@tty1.service serial-getty@ttyS0.service \
        >/dev/null 2>&1
    ROOT_VERSION="tether $("$TETHER_BIN" --version | awk '{print $2}') appliance (disk, $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown), built $(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo "$ROOT_VERSION" >"$r/etc/tether-appliance-version"

    # The kernel linux-image-amd64 points at (an upgrade may leave the release's beside it).
    ROOT_KVER=$(chroot "$r" dpkg-query -W -f='${Depends}' linux-image-amd64 | sed -n 's/^linux-image-\([^ ,]*-amd64\).*/\1/p')
    [ -f "$r/boot/vmlinuz-$ROOT_KVER" ] && [ -f "$r/boot/initrd.img-$ROOT_KVER" ] \
        || die "no kernel or initramfs $ROOT_KVER in the root filesystem"
    find "$r/boot" -mindepth 1 -maxdepth 1 ! -name "vmlinuz-$ROOT_KVER" ! -name "initrd.img-$ROOT_KVER" -exec rm -rf {} +
    mv "$r/boot/vmlinuz-$ROOT_KVER" "$r/boot/vmlinuz"
    mv "$r/boot/initrd.img-$ROOT_KVER" "$r/boot/initrd.img"
    rm -f "$r/vmlinuz" "$r/vmlinuz.old" "$r/initrd.img" "$r/initrd.img.old"
    rm -rf "${r:?}/usr/share/doc/"* "${r:?}/usr/share/man/"* "${r:?}/usr/share/locale/"*
    local root_mib
    root_mib=$(( $(du -sm "$r" | cut -f1) * 5 / 4 + 64 ))
    [ "$root_mib" -le "$SLOT_MIB" ] || die "the root filesystem (${root_mib} MiB) does not fit a slot (SLOT_MIB=$SLOT_MIB)"
    step "root filesystem image: ext4, ${root_mib} MiB (slots are ${SLOT_MIB} MiB)"
    ROOT_IMG=$WORK/root.img
    rm -f "$ROOT_IMG" && : >"$ROOT_IMG"
    mkfs.ext4 -q -L tether-root -d "$r" "$ROOT_IMG" "${root_mib}M"
}

# Writes GRUB's environment block (1024 bytes) with the boot state: slot=$2, no trial.
grubenv() {
    local head
    head=$(printf '# GRUB Environment Block\nslot=%s\ntry_slot=' "$2")
    { printf '%s\n' "$head"; printf "%$((1023 - ${#head}))s" '' | tr ' ' '#'; } >"$1"
}

build_disk() {
    need debootstrap debootstrap; need mkfs.vfat dosfstools; need mcopy mtools; need sfdisk fdisk
    need syslinux syslinux; need grub-mkstandalone grub-common; need mkfs.ext4 e2fsprogs; need debugfs e2fsprogs
    [ -f /usr/lib/syslinux/mbr/mbr.bin ] || die "SYSLINUX's MBR is missing (package syslinux-common)"
    [ -d /usr/lib/grub/x86_64-efi ] || die "GRUB's UEFI modules are missing (package grub-efi-amd64-bin)"
    build_root
    local dir=$OUT/disk
    mkdir -p "$dir"
    rm -f "$dir/SHA256SUMS"
    local esp=$WORK/esp.img part=${DISK_ID#0x}
    step "ESP: slot A's kernel $ROOT_KVER and initramfs, SYSLINUX (BIOS) and GRUB (UEFI), boot state slot=a"
    # SYSLINUX boots its DEFAULT slot; tether-update and slot-check change that line.
    cat >"$WORK/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT a
TIMEOUT 10
LABEL a
  LINUX /a/vmlinuz
  INITRD /a/initrd.img
  APPEND root=PARTUUID=$part-02 tether.slot=a $KERNEL_CMDLINE
LABEL b
  LINUX /b/vmlinuz
  INITRD /b/initrd.img
  APPEND root=PARTUUID=$part-03 tether.slot=b $KERNEL_CMDLINE
CFG
    # GRUB boots the committed slot, or once the slot on trial (clearing the trial before it
    # boots it: if that slot never marks itself good, the next boot is the committed one).
    cat >"$WORK/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
# Hidden: only Esc, F4 or Shift during the second shows the menu, so stray bytes on the serial
# line (a terminal server, a reset UART) never hold the boot at the menu.
set timeout_style=hidden
set timeout=1
search --no-floppy --label TETHERESP --set=root
set slot=a
set try_slot=
load_env -f /grubenv slot try_slot
set boot=\$slot
if [ -n "\$try_slot" ]; then
    set boot=\$try_slot
    set try_slot=
    save_env -f /grubenv try_slot
    echo "tether: booting slot \$boot once, on trial (committed: \$slot)"
fi
if [ "\$boot" = b ]; then set partnum=03; else set boot=a; set partnum=02; fi
menuentry "Tether appliance, slot \$boot" {
    linux /\$boot/vmlinuz root=PARTUUID=$part-\$partnum tether.slot=\$boot $KERNEL_CMDLINE
    initrd /\$boot/initrd.img
}
CFG
    grub-mkstandalone -O x86_64-efi \
        --modules="part_msdos part_gpt fat search search_label linux serial loadenv test echo" \
        --locales= --fonts= --themes= -o "$WORK/BOOTX64.EFI" "boot/grub/grub.cfg=$WORK/grub.cfg"
    grubenv "$WORK/grubenv" a
    rm -f "$esp" "$WORK/vmlinuz" "$WORK/initrd.img"
    debugfs -R "dump /boot/vmlinuz $WORK/vmlinuz" "$ROOT_IMG" 2>/dev/null
    debugfs -R "dump /boot/initrd.img $WORK/initrd.img" "$ROOT_IMG" 2>/dev/null
    [ -s "$WORK/vmlinuz" ] && [ -s "$WORK/initrd.img" ] || die "no /boot/vmlinuz or /boot/initrd.img in the root image"
    mkfs.vfat -C -n TETHERESP "$esp" $((96 * 1024)) >/dev/null
    export MTOOLS_SKIP_CHECK=1
    mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/a ::/b
    mcopy -i "$esp" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$esp" "$WORK/vmlinuz" ::/a/vmlinuz
    mcopy -i "$esp" "$WORK/initrd.img" ::/a/initrd.img
    mcopy -i "$esp" "$WORK/syslinux.cfg" ::/syslinux.cfg
    mcopy -i "$esp" "$WORK/grubenv" ::/grubenv
    syslinux --install "$esp"

    rm -f "$WORK/data.img" && : >"$WORK/data.img"
    mkfs.ext4 -q -L tether-data "$WORK/data.img" 64M

    step "disk: ESP 96 MiB, root slots A and B ${SLOT_MIB} MiB each (A holds the root), data 64 MiB (grown at first boot)"
    local img=$dir/tether-appliance.img
    local esp_start=2048 esp_size=$((96 * 2048)) root_size=$((SLOT_MIB * 2048)) data_size=$((64 * 2048))
    local a_start=$((esp_start + esp_size))
    local b_start=$((a_start + root_size))
    local d_start=$((b_start + root_size))
    rm -f "$img"
    truncate -s $(( (d_start + data_size) * 512 )) "$img"
    sfdisk -q "$img" <<TABLE
label: dos
label-id: $DISK_ID
$esp_start,$esp_size,ef,*
$a_start,$root_size,83
$b_start,$root_size,83
$d_start,$data_size,83
TABLE
    dd if="$esp" of="$img" bs=512 seek=$esp_start conv=notrunc,sparse status=none
    dd if="$ROOT_IMG" of="$img" bs=512 seek=$a_start conv=notrunc,sparse status=none
    dd if="$WORK/data.img" of="$img" bs=512 seek=$d_start conv=notrunc,sparse status=none
    dd if=/usr/lib/syslinux/mbr/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
    step "disk image ready in $((SECONDS - started))s ($(du -m "$img" | cut -f1) MiB allocated)"
    report "$img"
}

# An update bundle for tether-update: a tar archive of
#   manifest       format=1, version=, kernel=, root_image=, root_sha256= (of the compressed
#                  image), root_bytes= (uncompressed), created=
#   manifest.sig   the manifest's Ed25519 signature (raw, 64 bytes), by the update-signing key
#   root.img.zst   the root filesystem image for a slot, zstd-compressed
# UPDATE_ROOT=FILE.img bundles that root image instead of building one (its version is its
# /etc/tether-appliance-version); UPDATE_BUNDLE_OUT=FILE writes the bundle there instead of
# OUT/update/tether-appliance.bundle.
build_update_bundle() {
    need zstd zstd; need openssl openssl; need debugfs e2fsprogs
    local version kver
    if [ -n "${UPDATE_ROOT:-}" ]; then
        signing_key
        ROOT_IMG=$UPDATE_ROOT
        [ -r "$ROOT_IMG" ] || die "UPDATE_ROOT=$ROOT_IMG cannot be read"
        version=$(debugfs -R 'cat /etc/tether-appliance-version' "$ROOT_IMG" 2>/dev/null | head -n 1)
        kver=unknown
    else
        build_root
        version=$ROOT_VERSION kver=$ROOT_KVER
    fi
    [ -n "$version" ] || die "the root image has no /etc/tether-appliance-version"
    local out=${UPDATE_BUNDLE_OUT:-$OUT/update/tether-appliance.bundle}
    local b=$WORK/bundle
    mkdir -p "$(dirname "$out")" "$b"
    [ -n "${UPDATE_BUNDLE_OUT:-}" ] || rm -f "$(dirname "$out")/SHA256SUMS"
    step "update bundle: compressing the root image ($(( $(stat -c %s "$ROOT_IMG") / 1048576 )) MiB, zstd)"
    zstd -q -T0 "-${UPDATE_ZSTD_LEVEL:-9}" -f "$ROOT_IMG" -o "$b/root.img.zst"
    cat >"$b/manifest" <<MANIFEST
format=1
version=$version
kernel=$kver
root_image=root.img.zst
root_sha256=$(sha256sum "$b/root.img.zst" | cut -c1-64)
root_bytes=$(stat -c %s "$ROOT_IMG")
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
MANIFEST
    openssl pkeyutl -sign -inkey "$SIGNING_KEY" -rawin -in "$b/manifest" -out "$b/manifest.sig"
    openssl pkeyutl -verify -pubin -inkey "$PUBLIC_KEY" -rawin -in "$b/manifest" -sigfile "$b/manifest.sig" >/dev/null \
        || die "the signature just made does not verify"
    # The manifest first: tether-update reads it before anything else.
    rm -f "$out"
    tar --format=ustar --owner=0 --group=0 -cf "$out" -C "$b" manifest manifest.sig root.img.zst
    step "update bundle ready in $((SECONDS - started))s: $version; signed by the key with SHA-256 $(key_fingerprint "$PUBLIC_KEY")"
    report "$out"
}

case ${1:-} in
minimal) build_minimal ;;
iso) build_iso ;;
disk) build_disk ;;
update-bundle) build_update_bundle ;;
rootfs-cache)
    need debootstrap debootstrap
    ROOTFS_CACHE_ONLY=1 debian_rootfs
    ;;
all)
    build_iso
    build_disk
    build_update_bundle
    ;;
*)
    echo "usage: $0 minimal|iso|disk|update-bundle|all|rootfs-cache   (see appliance-image/README.md)" >&2
    exit 2
    ;;
esac
