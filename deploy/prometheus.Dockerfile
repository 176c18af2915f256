# Prometheus on an empty base: Debian's binary, the glibc loader and the shared libraries it
# links, with deploy/prometheus.yml and deploy/alerts.yml (compose mounts both over these).
# deploy/build-images assembles the build context; this file is not built from the repository.
FROM scratch
COPY rootfs/ /
COPY --chown=65534:65534 data/ /prometheus/
VOLUME /prometheus
USER 65534:65534
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=:9090"]
