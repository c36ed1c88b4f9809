# csi-oxide: one image for both modes. The controller runs as the unprivileged user below; the
# node plugin's DaemonSet runs it as root, privileged (deploy/kubernetes/base/node.yaml).
# Build from the repository root:  docker build -t csi-oxide:0.1.0 .

# ---- builder: the wheel, from the committed sources and generated stubs ----
FROM python:3.11.14-slim-bookworm AS builder
WORKDIR /src
RUN python -m pip install --no-cache-dir build==1.3.0
COPY pyproject.toml README.md ./
COPY csi_oxide ./csi_oxide
COPY csi_oxide_lab ./csi_oxide_lab
COPY proto ./proto
RUN python -m build --wheel --outdir /dist

# ---- runtime: Python, the node's tools and the wheel ----
FROM python:3.11.14-slim-bookworm AS runtime
# util-linux: blkid, setpriv; mount: mount, umount, losetup; e2fsprogs: mkfs.ext4, mkfs.ext3,
# e2fsck, resize2fs, dumpe2fs; xfsprogs: mkfs.xfs, xfs_growfs, xfs_db; libudev1: loaded by pyudev.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      util-linux mount e2fsprogs xfsprogs libudev1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=builder /dist/*.whl /tmp/
RUN python -m pip install --no-cache-dir /tmp/*.whl && rm -f /tmp/*.whl
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The controller's user; the node's DaemonSet overrides it with root.
RUN groupadd --system --gid 65532 csi && useradd --system --uid 65532 --gid csi --no-create-home csi
USER 65532:65532
ENTRYPOINT ["csi-oxide"]
CMD ["serve", "--mode=controller", "--endpoint=unix:///csi/csi.sock"]
