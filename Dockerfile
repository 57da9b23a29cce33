# connscope/connscope: one image for every role (`connscope controller`,
# `agent`, `classifier`, `standalone`, `classify`). The same content as
# hack/images.sh assembles without a Docker engine: a static connscope
# binary, iptables with both backends (nft and legacy) from Debian 12, and
# a non-root user 65532 that the controller and the classifier run as (the
# agent's pod asks for root with only NET_ADMIN and NET_RAW).
#
#   docker build -t connscope/connscope:0.1.0 .   # the release's tag (internal/version)
#   docker build -f Dockerfile.pause -t connscope/pause:latest .   # optional
#
# (No Docker engine and no registry are reachable where connscope is
# developed, so this file is not built by its tests; hack/images.sh is.)

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/connscope ./cmd/connscope

FROM debian:12-slim
# iptables 1.8.9 ships xtables-nft-multi and xtables-legacy-multi with the
# iptables-nft*/iptables-legacy* links; the plain names point at nft, as
# update-alternatives sets them in Debian 12.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc /usr/share/man \
 && for fam in iptables ip6tables; do for s in "" -save -restore; do \
      ln -sfn xtables-nft-multi /usr/sbin/$fam$s; done; done \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home --shell /sbin/nologin nonroot
COPY --from=build /out/connscope /usr/local/bin/connscope
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/connscope"]
