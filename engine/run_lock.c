#include "run_lock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "common.h"

int es_run_lock(int *fd, const char *dir) {
    char path[4200];
    if (snprintf(path, sizeof path, "%s/.lock", dir) >= (int)sizeof path) return es_fail("%s: path too long", dir);
    *fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0) return es_fail("%s: cannot open: %s", path, strerror(errno));
    if (flock(*fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char holder[300] = "";
        ssize_t n = pread(*fd, holder, sizeof holder - 1, 0);
        holder[n > 0 ? n : 0] = 0;
        holder[strcspn(holder, "\n")] = 0;
        close(*fd);
        *fd = -1;
        if (e != EWOULDBLOCK) return es_fail("%s: cannot lock: %s", path, strerror(e));
        char pid[32] = "?", host[256] = "?";
        sscanf(holder, "%31s %255s", pid, host);
        return es_fail("%s: another essence train (pid %s on host %s) is using this run folder; wait for it to end "
                       "or choose another run.out",
                       dir, pid, host);
    }
    char me[300], host[256] = "?";
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "?");
    host[sizeof host - 1] = 0;
    int n = snprintf(me, sizeof me, "%ld %s\n", (long)getpid(), host);
    if (ftruncate(*fd, 0) != 0 || pwrite(*fd, me, (size_t)n, 0) != n) {
        int e = errno;
        close(*fd);
        *fd = -1;
        return es_fail("%s: cannot write: %s", path, strerror(e));
    }
    return ES_OK;
}
