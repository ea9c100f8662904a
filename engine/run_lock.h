// One trainer per run folder: an exclusive lock on run.out for the life of
// the process.
#pragma once

// Takes flock(LOCK_EX) on DIR/.lock and records "PID HOST" in it; *fd stays
// open for the life of the process, and the kernel releases the lock when
// the process ends, however it ends. A folder another process holds is
// refused with one line naming that holder's PID and host. Under mpirun
// rank 0 takes it for the whole job.
int es_run_lock(int *fd, const char *dir);
