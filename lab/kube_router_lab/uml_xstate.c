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

static size_t host_size(ptrace_fn real, pid_t pid)
{
	static size_t size;
	if (size == 0) {
		/* a GETREGSET reports how much of the buffer the kernel's layout fills */
		static unsigned char probe[1 << 16];
		struct iovec iov = { probe, sizeof probe };
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
		size_t size = host_size(real, pid);
		if (size > given->iov_len && size <= (1 << 16)) {
			if (wide == NULL && (wide = malloc(1 << 16)) == NULL)
				return real(request, pid, addr, data);
			memcpy(wide, given->iov_base, given->iov_len);
			memset(wide + given->iov_len, 0, size - given->iov_len);
			struct iovec iov = { wide, size };
			return real(request, pid, addr, &iov);
		}
	}
	return real(request, pid, addr, data);
}
