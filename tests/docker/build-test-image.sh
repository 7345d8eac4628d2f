#!/usr/bin/env bash
# Build the Docker test image `fleet-test:latest` (git, python3, a shell, coreutils, a uid 1000 user) with
# no registry: Debian packages are fetched with apt-get download, unpacked with dpkg -x into a root file
# system, and that tree is loaded with `docker import`. Idempotent: does nothing when the image exists.
# Needs: a Debian (or Debian-based) machine, root (for apt-get update), a reachable Docker engine.
set -euo pipefail

IMAGE="${FLEET_TEST_IMAGE:-fleet-test:latest}"
PACKAGES=(bash dash coreutils git python3 base-files)
# Heavy packages git does not need for clone/commit/diff; leaving them out keeps every container (vfs
# copies the whole image per container) small.
EXCLUDE_RE='^(perl|perl-modules-.*|libperl.*|liberror-perl|git-man|debconf.*|cdebconf.*|install-info|dpkg|tzdata)$'

say() { printf '[build-test-image] %s\n' "$*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already exists; nothing to do (docker rmi $IMAGE to rebuild)"
    exit 0
fi

start=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/fleet-test-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/rootfs"

if ! compgen -G "/var/lib/apt/lists/*Packages*" >/dev/null; then
    say "apt package lists are empty: running apt-get update"
    apt-get update -qq
fi

say "resolving dependencies of: ${PACKAGES[*]}"
mapfile -t wanted < <(
    apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
        --no-enhances "${PACKAGES[@]}" \
    | grep -E '^[a-z0-9]' | grep -v '^<' | sed 's/:any$//' | sort -u | grep -Ev "$EXCLUDE_RE"
)
say "downloading ${#wanted[@]} packages"
cd "$work/debs"
if ! apt-get download -qq -o APT::Sandbox::User=root "${wanted[@]}" >/dev/null 2>&1; then
    # One name that is only virtual spoils the batch: fetch one by one and skip what cannot be fetched.
    for pkg in "${wanted[@]}"; do
        apt-get download -qq -o APT::Sandbox::User=root "$pkg" >/dev/null 2>&1 || say "skipped $pkg (not downloadable)"
    done
fi

say "unpacking into a root file system"
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work/rootfs"
done

cd "$work/rootfs"
# Merged /usr, as Debian installs it: /bin, /sbin, /lib* are links into /usr.
for dir in bin sbin lib lib32 lib64 libx32; do
    if [ -d "$dir" ] && [ ! -L "$dir" ]; then
        mkdir -p "usr/$dir"
        cp -a "$dir/." "usr/$dir/"
        rm -rf "$dir"
        ln -s "usr/$dir" "$dir"
    fi
done
[ -e usr/bin/sh ] || ln -s dash usr/bin/sh
[ -e usr/bin/python3 ] || ln -s "$(cd usr/bin && ls python3.* | grep -E '^python3\.[0-9]+$' | head -1)" usr/bin/python3

rm -rf usr/share/doc usr/share/locale usr/share/man usr/share/info  # not needed to run anything
mkdir -p etc tmp root home/agent workspace fleet var/tmp
chmod 1777 tmp var/tmp
cat > etc/passwd <<'PASSWD'
root:x:0:0:root:/root:/bin/bash
agent:x:1000:1000:fleet agent:/home/agent:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat > etc/group <<'GROUP'
root:x:0:
agent:x:1000:
nogroup:x:65534:
GROUP
chown -R 1000:1000 home/agent

say "importing as $IMAGE"
tar -C "$work/rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /workspace' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null

docker run --rm --network none --user 1000:1000 "$IMAGE" sh -c 'git --version && python3 --version' >&2
say "built $IMAGE in $(( $(date +%s) - start )) s ($(du -sh "$work/rootfs" | cut -f1) unpacked)"
