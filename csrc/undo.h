/* The undo log, the mutex and repair: what makes every operation crash-atomic.
 *
 * CONTRACT
 *   U1 Inside an operation (op_begin .. op_commit, under the mutex) every store to a byte that was
 *      reachable before the operation goes through W(): the record (offset, old value) is
 *      written, then counted (undo_n + 1), then the word changes, each step ordered by a release
 *      fence. Bytes that were unreachable before the operation (fresh chunks, ring bytes past
 *      the head) take plain stores. So at any instruction the log restores the state before the
 *      operation, and a reader can see that state too (view.h).
 *   U2 The commit point is the store undo_n = 0; the rings' pending records are published after
 *      it (ring.h R2).
 *   U3 repair() (the next locker after an owner died, EOWNERDEAD): an uncommitted operation
 *      (undo_n > 0) first forgets its pending ring records, then is rolled back, newest store
 *      first, undo_n counting down with each; a committed one (undo_n == 0) has its pending
 *      records published. A repairer that dies at any of its own stores leaves a state the next
 *      repairer finishes the same way: pending is cleared before the first word is rolled back,
 *      so a half-rolled-back operation can never be published.
 *   U4 seq is odd exactly while an operation is open; repair closes it.
 */
#ifndef SYN_MP_UNDO_H
#define SYN_MP_UNDO_H

#include <errno.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "layout.h"
#include "ring.h"

/* ---------------------------------------------------------------- test hooks */

static int64_t test_kill_after = -1, test_stop_after = -1;

/* Crash-safety tests: the writer (or repairer) stops for good, or pauses, at this store. */
static inline void test_point(void) {
    if (UNLIKELY(test_kill_after >= 0) && test_kill_after-- == 0) raise(SIGKILL);
    if (UNLIKELY(test_stop_after >= 0) && test_stop_after-- == 0) raise(SIGSTOP);
}

/* ---------------------------------------------------------------- logging */

static inline void W(synt_t *t, uint64_t *p, uint64_t v) {
    hdr_t *h = H(t);
    uint64_t n = h->undo_n;
    if (n >= UNDO_MAX) abort(); /* an operation touches a bounded number of words */
    test_point();
    h->undo[n].off = (uint64_t)((uint8_t *)p - t->base);
    h->undo[n].old = *p;
    __atomic_thread_fence(__ATOMIC_RELEASE); /* the record is complete before it is counted */
    ST(h->undo_n, n + 1);
    __atomic_thread_fence(__ATOMIC_RELEASE); /* and counted before the word changes */
    ST(*p, v);
}

/* a uint32 field: the aligned word that holds it is logged */
static inline void W32(synt_t *t, uint64_t off, uint32_t v) {
    uint64_t *w = (uint64_t *)(t->base + (off & ~7ULL));
    int sh = (int)(off & 4) * 8;
    W(t, w, (*w & ~(0xffffffffULL << sh)) | ((uint64_t)v << sh));
}

static inline uint32_t R32(const synt_t *t, uint64_t off) {
    return *(const uint32_t *)(t->base + off);
}

static void rollback(synt_t *t) {
    hdr_t *h = H(t);
    uint64_t n = h->undo_n;
    if (n > UNDO_MAX) n = UNDO_MAX;
    while (n > 0) {
        n--;
        undo_t *u = &h->undo[n];
        /* the log is in the segment: an offset is followed only inside the mapping */
        if (t->size >= 8 && u->off <= t->size - 8 && (u->off & 7) == 0) {
            test_point();
            ST(*(uint64_t *)(t->base + u->off), u->old);
        }
        __atomic_thread_fence(__ATOMIC_RELEASE);
        test_point();
        ST(h->undo_n, n);
    }
}

static inline void publish_rings(hdr_t *h) {
    if (h->jr.pending) {
        test_point();
        ST(h->j_last, h->j_last_pending);
        ring_publish(&h->jr);
    }
    ring_publish(&h->wr);
}

static void repair(synt_t *t) {
    hdr_t *h = H(t);
    if (h->undo_n > 0) {
        /* U3: forget what the operation wrote to the rings, then undo its stores */
        test_point();
        ST(h->jr.pending, 0);
        test_point();
        ST(h->wr.pending, 0);
        __atomic_thread_fence(__ATOMIC_RELEASE);
        rollback(t);
    } else {
        publish_rings(h); /* committed: publish as the dead writer would have */
    }
    test_point();
    if (h->seq & 1) __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELEASE);
}

/* ---------------------------------------------------------------- locking */

static pid_t my_pid;
static void forget_pid(void) { my_pid = 0; }
__attribute__((constructor)) static void at_load(void) { pthread_atfork(NULL, NULL, forget_pid); }

static inline void note_holder(synt_t *t) {
    if (UNLIKELY(my_pid == 0)) my_pid = getpid();
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* for `syn-mp status`: a tick's precision, no read of the TSC */
    ST(H(t)->holder_since, (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
    ST(H(t)->holder_pid, (int64_t)my_pid);
}

/* after pthread_mutex_(try)lock returned r: repair a dead owner's work, note the holder */
static int took_lock(synt_t *t, int r) {
    if (r == EBUSY) return SYNT_EBUSY;
    if (r != 0 && r != EOWNERDEAD) return SYNT_ELOCK;
    note_holder(t);
    if (r == EOWNERDEAD) {
        repair(t);
        pthread_mutex_consistent(&H(t)->mutex);
    }
    return 0;
}

static int lock(synt_t *t) {
    if (!t->lock_wait_ns) return took_lock(t, pthread_mutex_lock(&H(t)->mutex));
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.tv_nsec + t->lock_wait_ns % 1000000000u;
    ts.tv_sec += (time_t)(t->lock_wait_ns / 1000000000u + ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    int r = pthread_mutex_clocklock(&H(t)->mutex, CLOCK_MONOTONIC, &ts);
    return took_lock(t, r == ETIMEDOUT ? EBUSY : r);
}

/* 0 locked, SYNT_EBUSY held by a live writer (never waits), SYNT_ELOCK unusable */
static int try_lock(synt_t *t) { return took_lock(t, pthread_mutex_trylock(&H(t)->mutex)); }

static void unlock(synt_t *t) {
    ST(H(t)->holder_pid, 0);
    pthread_mutex_unlock(&H(t)->mutex);
}

/* Start of one crash-atomic operation (under the mutex). */
static inline void op_begin(synt_t *t) {
    hdr_t *h = H(t);
    __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* readers see odd before any change */
}

/* U2: clear the log (the commit point), publish the rings, close the operation. */
static inline void op_commit(synt_t *t) {
    hdr_t *h = H(t);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    ST(h->undo_n, 0);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    publish_rings(h);
    __atomic_store_n(&h->seq, h->seq + 1, __ATOMIC_RELEASE);
}

#endif
