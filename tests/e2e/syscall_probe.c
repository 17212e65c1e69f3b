/* A syscall probe for the seccomp tests: `probe NAME...` makes each named call once and prints
 * `NAME ok` or `NAME <errno name>`, so a test tells seccomp's EPERM from the kernel's own answer.
 * Built static by tests/e2e/test_seccomp.py and copied into the test image. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif

static const char *err(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case ENOENT: return "ENOENT";
    case EINVAL: return "EINVAL";
    case EACCES: return "EACCES";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EFAULT: return "EFAULT";
    case EBADF: return "EBADF";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    default: return "EOTHER";
    }
}

static long child_exit(long pid) {
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, 0);
    return pid;
}

static long probe(const char *name) {
    if (!strcmp(name, "unshare-user")) return unshare(CLONE_NEWUSER);
    if (!strcmp(name, "unshare-net")) return unshare(CLONE_NEWNET);
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 0);
    if (!strcmp(name, "add_key")) return syscall(SYS_add_key, "user", "k", "v", 1, -3);
    /* The kernel looks the target up first: ENOENT from it, EPERM only from seccomp. */
    if (!strcmp(name, "mount")) return mount("none", "/no/such/target", "tmpfs", 0, NULL);
    if (!strcmp(name, "io_uring_setup")) {
        char params[120];
        memset(params, 0, sizeof params);
        return syscall(SYS_io_uring_setup, 1, params);
    }
    if (!strcmp(name, "personality-read-implies-exec")) return personality(READ_IMPLIES_EXEC);
    if (!strcmp(name, "personality-query")) return personality(0xffffffff);
    if (!strcmp(name, "clone-newuser"))
        return child_exit(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone-plain")) return child_exit(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone3")) return syscall(SYS_clone3, NULL, 0);
    if (!strcmp(name, "socket-inet")) return socket(AF_INET, SOCK_STREAM, 0);
    if (!strcmp(name, "socket-vsock")) return socket(AF_VSOCK, SOCK_STREAM, 0);
    if (!strcmp(name, "socket-alg")) return socket(AF_ALG, SOCK_SEQPACKET, 0);
    /* High bits the kernel ignores (it reads an int): a "!= 40" filter would let this through. */
    if (!strcmp(name, "socket-vsock-highbits"))
        return syscall(SYS_socket, 0x100000000L | AF_VSOCK, SOCK_STREAM, 0);
    /* UFFD_USER_MODE_ONLY: the kernel allows it without privilege (vm.unprivileged_userfaultfd=0). */
    if (!strcmp(name, "userfaultfd")) return syscall(SYS_userfaultfd, 1);
    if (!strcmp(name, "bpf")) return syscall(SYS_bpf, 0, NULL, 0);
    if (!strcmp(name, "chroot")) return chroot("/");
    if (!strcmp(name, "sethostname")) return sethostname("probe", 5);
    if (!strcmp(name, "getpid")) return getpid();
    errno = EINVAL;
    return -2;
}

int main(int argc, char **argv) {
    /* Each probe in its own child, so one that succeeds (unshare) cannot change the next. */
    for (int i = 1; i < argc; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) return 1;
        if (pid == 0) {
            errno = 0;
            long r = probe(argv[i]);
            if (r == -2) printf("%s unknown-probe\n", argv[i]);
            else if (r < 0) printf("%s %s\n", argv[i], err(errno));
            else printf("%s ok\n", argv[i]);
            fflush(stdout);
            _exit(0);
        }
        waitpid(pid, NULL, 0);
    }
    return 0;
}
