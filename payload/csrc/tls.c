/* The payload's per-thread state in initial-exec TLS.
 *
 * A dlopen'ed library's ordinary (general-dynamic) TLS goes through __tls_get_addr, which
 * may call malloc the first time a thread touches it. When that malloc reaches one of our
 * hooks, the hook must be able to read its reentrancy guard without touching such TLS
 * again, or it recurses. Initial-exec TLS is a fixed offset from the thread pointer: no
 * call, no allocation. Stable Rust cannot choose the TLS model, hence these few lines of C.
 */
#include <stdint.h>

struct memray_tls {
    unsigned char guard;
    unsigned char exiting;
    uint64_t generation;
    uint64_t tid;
    void *state;
    /* The sampler's countdown (see sampling.rs). */
    int64_t bytes_left;
    uint64_t rng;
    uint64_t sampling_generation;
    /* The frame the thread's stack walks may stop at (see stack.rs); 0: none. */
    uintptr_t anchor;
    /* The anchor's index in the written stack (see thread_state.rs). */
    uintptr_t anchor_below;
};

static __thread struct memray_tls tls __attribute__((tls_model("initial-exec"))) = {
    0, 0, UINT64_MAX, 0, 0, 0, 0, UINT64_MAX, 0, 0,
};

struct memray_tls *memray_tls_get(void) { return &tls; }
