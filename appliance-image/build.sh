#!/usr/bin/env bash
# Builds the appliance's images from the workspace's release `tether` binary.
#
#   appliance-image/build.sh minimal   Debian's kernel + an initramfs (busybox, tether, glibc):
#                                      OUT/minimal/{vmlinuz,initrd.img}; boots with qemu -kernel
#   appliance-image/build.sh iso       the same kernel and initramfs on a hybrid BIOS/UEFI ISO
#                                      (grub-mkrescue): OUT/iso/tether-appliance.iso
#   appliance-image/build.sh disk      a Debian 12 disk image (debootstrap, systemd), read-only
#                                      root in slot A (slot B reserved), a data partition grown at
#                                      first boot, BIOS (SYSLINUX) and UEFI (GRUB) boot:
#                                      OUT/disk/tether-appliance.img (raw, sparse)
#   appliance-image/build.sh all       all three (what scripts/test.sh builds)
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
DISK_PACKAGES=systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,zstd,e2fsprogs,fdisk,iproute2,tar
debian_rootfs() {
    local mirror key cached
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -n 1)
    mirror=${DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}
    key=$(echo "bookworm+updates+security one kernel $DISK_PACKAGES" | sha256sum | cut -c1-12)
    cached=$CACHE/rootfs-bookworm-$key.tar.zst
    ROOTFS=$WORK/rootfs
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
        mkdir -p "$CACHE"
        tar -C "$ROOTFS" --numeric-owner -cf - . | zstd -q -T0 >"$cached.tmp" && mv "$cached.tmp" "$cached"
    else
        step "Debian root filesystem from the cache ($(basename "$cached"))"
        mkdir -p "$ROOTFS"
        zstd -qdc "$cached" | tar -C "$ROOTFS" --numeric-owner -xf -
    fi
}

# MBR disk identifier: partitions are found as PARTUUID=7e7e7e01-0N.
DISK_ID=0x7e7e7e01
build_disk() {
    need debootstrap debootstrap; need mkfs.vfat dosfstools; need mcopy mtools; need sfdisk fdisk
    need syslinux syslinux; need grub-mkstandalone grub-common; need mkfs.ext4 e2fsprogs
    [ -f /usr/lib/syslinux/mbr/mbr.bin ] || die "SYSLINUX's MBR is missing (package syslinux-common)"
    [ -d /usr/lib/grub/x86_64-efi ] || die "GRUB's UEFI modules are missing (package grub-efi-amd64-bin)"
    tether_binary
    debian_rootfs
    local r=$ROOTFS dir=$OUT/disk
    mkdir -p "$dir"
    rm -f "$dir/SHA256SUMS"
    step "configuring the root filesystem (tether, systemd units, read-only root)"
    strip -o "$r/usr/bin/tether" "$TETHER_BIN" && chmod 0755 "$r/usr/bin/tether"
    mkdir -p "$r/usr/lib/tether-appliance" "$r/etc/tether" "$r/var/lib/tether" "$r/etc/systemd/network"
    sed 's|^# Shared by|# Shared by|' "$HERE/minimal/etc/init.d/functions" >"$r/usr/lib/tether-appliance/functions"
    for f in seed-apply seed-reply banner; do
        sed 's|\. /etc/init\.d/functions|. /usr/lib/tether-appliance/functions|' "$HERE/minimal/etc/init.d/$f" \
            >"$r/usr/lib/tether-appliance/$f"
    done
    install -m 0755 "$HERE/disk/tether-data" "$r/usr/lib/tether-appliance/tether-data"
    chmod 0755 "$r/usr/lib/tether-appliance/"seed-* "$r/usr/lib/tether-appliance/banner"
    cp "$HERE/minimal/etc/tether/default.toml" "$r/etc/tether/default.toml"
    cp "$HERE/disk/"*.service "$r/etc/systemd/system/"
    cp "$HERE/disk/20-wired.network" "$r/etc/systemd/network/"
    echo tether >"$r/etc/hostname"
    : >"$r/etc/machine-id"
    cat >"$r/etc/fstab" <<FSTAB
PARTUUID=${DISK_ID#0x}-02 / ext4 ro,noatime 0 1
tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0
tmpfs /var/tmp tmpfs mode=1777,nosuid,nodev 0 0
tmpfs /var/log tmpfs mode=0755,nosuid,nodev 0 0
FSTAB
    mkdir -p "$r/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\n' >"$r/etc/systemd/journald.conf.d/volatile.conf"
    systemctl --root="$r" enable tether-data.service tether-seed.service tether-seed-reply.service tether.service \
        tether-banner.service \
        systemd-networkd.service serial-getty@ttyS0.service >/dev/null 2>&1
    systemctl --root="$r" mask systemd-networkd-wait-online.service >/dev/null 2>&1
    echo "tether $("$TETHER_BIN" --version | awk '{print $2}') appliance (disk, $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown))" \
        >"$r/etc/tether-appliance-version"

    local kver
    # The kernel linux-image-amd64 points at (an upgrade may leave the release's beside it).
    kver=$(chroot "$r" dpkg-query -W -f='${Depends}' linux-image-amd64 | sed -n 's/^linux-image-\([^ ,]*-amd64\).*/\1/p')
    [ -f "$r/boot/vmlinuz-$kver" ] && [ -f "$r/boot/initrd.img-$kver" ] || die "no kernel or initramfs $kver in the root filesystem"
    local esp=$WORK/esp.img
    step "ESP: kernel $kver, its initramfs, SYSLINUX (BIOS) and GRUB (UEFI)"
    local cmdline="root=PARTUUID=${DISK_ID#0x}-02 ro console=tty0 console=ttyS0,115200 quiet panic=10"
    cat >"$WORK/syslinux.cfg" <<CFG
SERIAL 0 115200
DEFAULT tether
TIMEOUT 10
LABEL tether
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
CFG
    cat >"$WORK/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=1
search --no-floppy --label TETHERESP --set=root
menuentry "Tether appliance" {
    linux /vmlinuz $cmdline
    initrd /initrd.img
}
CFG
    grub-mkstandalone -O x86_64-efi --modules="part_msdos part_gpt fat search search_label linux serial" \
        --locales= --fonts= --themes= -o "$WORK/BOOTX64.EFI" "boot/grub/grub.cfg=$WORK/grub.cfg"
    rm -f "$esp"
    mkfs.vfat -C -n TETHERESP "$esp" $((96 * 1024)) >/dev/null
    export MTOOLS_SKIP_CHECK=1
    mmd -i "$esp" ::/EFI ::/EFI/BOOT
    mcopy -i "$esp" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i "$esp" "$r/boot/vmlinuz-$kver" ::/vmlinuz
    mcopy -i "$esp" "$r/boot/initrd.img-$kver" ::/initrd.img
    mcopy -i "$esp" "$WORK/syslinux.cfg" ::/syslinux.cfg
    syslinux --install "$esp"

    step "root filesystem (ext4, read-only at run time) and the data partition"
    rm -rf "${r:?}/boot/"* "${r:?}/usr/share/doc/"* "${r:?}/usr/share/man/"* "${r:?}/usr/share/locale/"*
    local root_mib
    root_mib=$(( $(du -sm "$r" | cut -f1) * 5 / 4 + 64 ))
    rm -f "$WORK/root.img" "$WORK/data.img"
    mkfs.ext4 -q -L tether-root-a -d "$r" "$WORK/root.img" "${root_mib}M"
    mkfs.ext4 -q -L tether-data "$WORK/data.img" 64M

    step "disk: ESP 96 MiB, root A and B ${root_mib} MiB each, data 64 MiB (grown at first boot)"
    local img=$dir/tether-appliance.img
    local esp_start=2048 esp_size=$((96 * 2048)) root_size=$((root_mib * 2048)) data_size=$((64 * 2048))
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
    dd if="$WORK/root.img" of="$img" bs=512 seek=$a_start conv=notrunc,sparse status=none
    dd if="$WORK/data.img" of="$img" bs=512 seek=$d_start conv=notrunc,sparse status=none
    dd if=/usr/lib/syslinux/mbr/mbr.bin of="$img" bs=440 count=1 conv=notrunc status=none
    step "disk image ready in $((SECONDS - started))s ($(du -m "$img" | cut -f1) MiB allocated)"
    report "$img"
}

case ${1:-} in
minimal) build_minimal ;;
iso) build_iso ;;
disk) build_disk ;;
all)
    build_iso
    build_disk
    ;;
*)
    echo "usage: $0 minimal|iso|disk|all   (see appliance-image/README.md)" >&2
    exit 2
    ;;
esac
