# shoal: one image for every peer.
#   docker build -t shoal .
#   docker run -p 8080:8080 -p 8000:8000 -v shoal-data:/data shoal
#
# Stage 1 builds the release binary; stage 2 is a slim Debian with what
# builds need at run time:
#   git         fetching submodules and the like (clones themselves use libgit2)
#   bubblewrap  the build sandbox (where the container may use it)
#   nodejs, npm npm projects; pnpm and yarn through corepack
#   hugo        Hugo sites
# Zola, mdBook and Jekyll are detected too: add them in an image built FROM
# this one. Plain HTML and `shoal.toml` shell builds need nothing more.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p node --bin shoal \
 && cp target/release/shoal /usr/local/bin/shoal

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 git bubblewrap nodejs npm hugo \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home shoal \
 && mkdir -p /data && chown shoal:shoal /data
COPY --from=build /usr/local/bin/shoal /usr/local/bin/shoal
USER 10001:10001
ENV SHOAL_DATA=/data SHOAL_HTTP_PORT=8080 SHOAL_SITES_PORT=8000 SHOAL_P2P_PORT=9000
EXPOSE 8080 8000 9000 9000/udp
VOLUME ["/data"]
ENTRYPOINT ["shoal"]
CMD ["node"]
