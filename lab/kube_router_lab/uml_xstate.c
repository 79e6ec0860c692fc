/*
 * Preloaded into linux.uml on hosts whose CPUs have AMX.
 *
 * UML 6.1 moves a guest process's FPU state in and out of the host process that runs it
 * with PTRACE_GETREGSET / PTRACE_SETREGSET (NT_X86_XSTATE), in a buffer sized for the
 * AVX-512 layout. Where the host's XSAVE area is larger (AMX adds 8 KiB of tile state), the
 * host kernel refuses any SETREGSET that is not exactly its own size (EFAULT), and the
 * guest's init dies at its first context switch ("ptrace set fp regs failed, errno = 14").
 * A GETREGSET needs nothing: the kernel truncates it to the buffer.
 *
 * Here each such SETREGSET is widened to the host's size: UML's bytes first, the rest (the
 * tile state, which no guest process can enable) zeroed. Any other request goes through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

#define WIDE (1 << 16) /* more than any XSAVE layout so far (AMX: 11,008 bytes) */

/* The host's size, from a GETREGSET into ``buf``: the kernel reports how much of it its
 * layout fills. */
static size_t host_size(ptrace_fn real, pid_t pid, unsigned char *buf)
{
	static size_t size;
	if (size == 0) {
		struct iovec iov = { buf, WIDE };
		if (real(PTRACE_GETREGSET, pid, (void *)NT_X86_XSTATE, &iov) == 0)
			size = iov.iov_len;
	}
	return size;
}

long ptrace(enum __ptrace_request request, ...)
{
	static ptrace_fn real;
	static __thread unsigned char *wide;
	va_list ap;
	pid_t pid;
	void *addr, *data;

	va_start(ap, request);
	pid = va_arg(ap, pid_t);
	addr = va_arg(ap, void *);
	data = va_arg(ap, void *);
	va_end(ap);
	if (real == NULL)
		real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");

	if (request == PTRACE_SETREGSET && (long)addr == NT_X86_XSTATE) {
		struct iovec *given = data;
		size_t size;
		if (wide == NULL && (wide = malloc(WIDE)) == NULL)
			return real(request, pid, addr, data);
		size = host_size(real, pid, wide);
		if (size > given->iov_len && size <= WIDE) {
			memcpy(wide, given->iov_base, given->iov_len);
			memset(wide + given->iov_len, 0, size - given->iov_len);
			struct iovec iov = { wide, size };
			return real(request, pid, addr, &iov);
		}
	}
	return real(request, pid, addr, data);
}
