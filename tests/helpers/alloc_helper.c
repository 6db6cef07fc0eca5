/* Allocation helpers for the end-to-end tests.
 *
 * Plain C, no Python.h. Every function calls the libc allocator through this
 * object's PLT/GOT, so a tracker that patches the GOT of loaded objects sees
 * the call with the exact size requested here. Tests call these through
 * ctypes on a known Python line.
 *
 * Built with: cc -shared -fPIC -O0 -fno-builtin -D_GNU_SOURCE -pthread
 */
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

void* helper_malloc(size_t size) { return malloc(size); }
void* helper_calloc(size_t nmemb, size_t size) { return calloc(nmemb, size); }
void* helper_realloc(void* ptr, size_t size) { return realloc(ptr, size); }
void helper_free(void* ptr) { free(ptr); }

void* helper_posix_memalign(size_t alignment, size_t size)
{
    void* ptr = NULL;
    if (posix_memalign(&ptr, alignment, size) != 0) {
        return NULL;
    }
    return ptr;
}

void* helper_aligned_alloc(size_t alignment, size_t size) { return aligned_alloc(alignment, size); }
void* helper_memalign(size_t alignment, size_t size) { return memalign(alignment, size); }
void* helper_valloc(size_t size) { return valloc(size); }
void* helper_pvalloc(size_t size) { return pvalloc(size); }

void* helper_mmap(size_t length)
{
    void* p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void* helper_mmap64(size_t length)
{
    void* p = mmap64(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int helper_munmap(void* addr, size_t length) { return munmap(addr, length); }

/* ---- allocations from a thread created in C (no Python thread state) ---- */

struct malloc_job {
    size_t size;
    void* result;
    const char* name;
};

static void* malloc_thread_main(void* arg)
{
    struct malloc_job* job = (struct malloc_job*)arg;
    if (job->name) {
        prctl(PR_SET_NAME, job->name, 0, 0, 0);
    }
    job->result = malloc(job->size);
    return NULL;
}

/* Create a pthread, malloc(size) in it, join it and return the pointer. */
void* helper_malloc_in_pthread(size_t size)
{
    struct malloc_job job = {size, NULL, NULL};
    pthread_t thread;
    if (pthread_create(&thread, NULL, malloc_thread_main, &job) != 0) {
        return NULL;
    }
    pthread_join(thread, NULL);
    return job.result;
}

/* Same, but the thread names itself with prctl(PR_SET_NAME) first. */
void* helper_malloc_in_named_pthread(size_t size, const char* name)
{
    struct malloc_job job = {size, NULL, name};
    pthread_t thread;
    if (pthread_create(&thread, NULL, malloc_thread_main, &job) != 0) {
        return NULL;
    }
    pthread_join(thread, NULL);
    return job.result;
}

/* ---- a thread created in C that calls back into Python ---- */

typedef void (*callback_t)(void);

static void* callback_thread_main(void* arg)
{
    callback_t cb = (callback_t)arg;
    cb(); /* a ctypes callback: takes the GIL with PyGILState_Ensure */
    return NULL;
}

/* Run cb() on a new pthread and join it. Returns 0 on success. */
int helper_call_in_pthread(callback_t cb)
{
    pthread_t thread;
    if (pthread_create(&thread, NULL, callback_thread_main, (void*)cb) != 0) {
        return -1;
    }
    return pthread_join(thread, NULL);
}
