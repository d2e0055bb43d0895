#ifndef CCACHETIERS_SHIMS_H
#define CCACHETIERS_SHIMS_H

/// Atomically exchanges two paths (Linux renameat2 with RENAME_EXCHANGE).
/// Returns 0 on success, -1 with errno set otherwise (ENOSYS/EINVAL where the
/// kernel or filesystem lacks it, and on platforms without the call).
int cachetiers_exchange_paths(const char *first, const char *second);

#include <stddef.h>
#include <stdint.h>

/// Extends a CRC-32C (Castagnoli, as Google Cloud Storage uses) over `length` bytes.
/// Start with 0; the result of one call is the `crc` of the next. Uses the SSE4.2
/// crc32 instruction where the CPU has it, a slicing-by-8 table otherwise.
uint32_t cachetiers_crc32c(uint32_t crc, const void *bytes, size_t length);

#include <sys/types.h>

/// Starts `path` with `argv` and `envp` detached from the caller: in a session of its own
/// (no controlling terminal), with every signal's default action and none blocked, stdin
/// from /dev/null, stdout and stderr on `log_fd` (an open descriptor of the caller's), and
/// no other descriptor of the caller open. Stores the child's pid in `pid`. Returns 0, or
/// an errno value (ENOSYS where posix_spawn cannot do this).
int cachetiers_spawn_detached(pid_t *pid, const char *path, char *const argv[], char *const envp[], int log_fd);

#endif
