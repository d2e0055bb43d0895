#ifndef CCACHETIERS_SHIMS_H
#define CCACHETIERS_SHIMS_H

/// Atomically exchanges two paths (Linux renameat2 with RENAME_EXCHANGE).
/// Returns 0 on success, -1 with errno set otherwise (ENOSYS/EINVAL where the
/// kernel or filesystem lacks it, and on platforms without the call).
int cachetiers_exchange_paths(const char *first, const char *second);

#endif
