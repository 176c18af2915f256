# haproxy on an empty base: Debian's binary, the glibc loader and the shared libraries it links.
# deploy/build-images assembles the build context; this file is not built from the repository.
# The configuration names no user, group or chroot, so no /etc/passwd is needed.
FROM scratch
COPY rootfs/ /
USER 65534:65534
EXPOSE 5000
# SIGUSR1: stop accepting, finish the transfers in flight (bounded by hard-stop-after).
STOPSIGNAL SIGUSR1
ENTRYPOINT ["/usr/sbin/haproxy", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
