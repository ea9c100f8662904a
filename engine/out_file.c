#include "out_file.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

int es_out_open(es_out *o, const char *path) {
    memset(o, 0, sizeof *o);
    o->path = path;
    struct stat st;
    if (!strcmp(path, "-")) {
        o->direct = 1;
        o->f = stdout;
        return ES_OK;
    }
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return es_fail("%s: is a directory", path);
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        o->direct = 1;
        o->f = fopen(path, "wb");
        if (!o->f) return es_fail("%s: cannot open for writing: %s", path, strerror(errno));
        return ES_OK;
    }
    if (snprintf(o->tmp, sizeof o->tmp, "%s.tmp-XXXXXX", path) >= (int)sizeof o->tmp)
        return es_fail("%s: path too long", path);
    int fd = mkstemp(o->tmp);
    if (fd < 0) return es_fail("%s: cannot create a temporary file: %s", path, strerror(errno));
    // as an ordinary new file, not mkstemp's 0600
    mode_t mask = umask(0);
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) != 0 || !(o->f = fdopen(fd, "wb"))) {
        int e = errno;
        close(fd);
        unlink(o->tmp);
        return es_fail("%s: cannot set up a temporary file: %s", path, strerror(e));
    }
    return ES_OK;
}

void es_out_abort(es_out *o) {
    if (o->f && o->f != stdout) fclose(o->f);
    if (o->f && !o->direct) unlink(o->tmp);
    o->f = NULL;
}

static int fsync_dir_of(const char *path) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return es_fail("%s: cannot open its directory: %s", path, strerror(errno));
    int rc = fsync(dfd);
    close(dfd);
    if (rc != 0) return es_fail("%s: fsync of its directory failed: %s", path, strerror(errno));
    return ES_OK;
}

// The data reaches the disk before the rename, and the rename before return.
int es_out_commit(es_out *o) {
    int bad = fflush(o->f) != 0 || ferror(o->f) || (!o->direct && fsync(fileno(o->f)) != 0);
    int e = errno;
    if (o->f != stdout && fclose(o->f) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    o->f = NULL;
    if (bad) {
        if (!o->direct) unlink(o->tmp);
        return es_fail("%s: write failed: %s", o->path, strerror(e ? e : EIO));
    }
    if (o->direct) return ES_OK;
    if (rename(o->tmp, o->path) != 0) {
        e = errno;
        unlink(o->tmp);
        return es_fail("%s: cannot rename into place: %s", o->path, strerror(e));
    }
    return fsync_dir_of(o->path);
}

int es_write_atomic(const char *path, const void *data, size_t len) {
    es_out o;
    if (es_out_open(&o, path)) return ES_ERR;
    if (len && fwrite(data, 1, len, o.f) != len) {
        int e = errno;
        es_out_abort(&o);
        return es_fail("%s: write failed: %s", path, strerror(e));
    }
    return es_out_commit(&o);
}
