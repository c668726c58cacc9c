/* Allocations through known call paths, for checking recorded stacks against ground truth.
 * Built with -O2 -fomit-frame-pointer: no frame pointer to follow, so only CFI unwinding
 * recovers these stacks. Each allocation has a size of its own; for each one the program
 * prints `BYTES PATH`, PATH being the functions it passed through, innermost first, up to
 * main or the thread's start routine. `noipa` keeps every function a real frame of its own
 * (no inlining, cloning or sibling calls change the path), but one, which is always inlined
 * and marked `[inlined]` in the path.
 *
 * Usage: alloc_paths LIBCUDA */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define FRAME __attribute__((noipa))

typedef int (*init_fn)(unsigned);
typedef int (*device_get_fn)(int *, int);
typedef int (*retain_fn)(void **, int);
typedef int (*set_current_fn)(void *);
typedef int (*alloc_fn)(unsigned long long *, size_t);

static alloc_fn mem_alloc;
static set_current_fn set_current;
static void *context;
static volatile int sink;

FRAME int alloc_leaf(size_t bytes, const char *path) {
    unsigned long long dptr = 0;
    int ret = mem_alloc(&dptr, bytes);
    printf("%zu alloc_leaf,%s\n", bytes, path);
    fflush(stdout);
    sink += ret;
    return ret;
}

/* Inlined into its caller: a function of the source with no frame of its own at run time,
 * known only to the debug information; the path marks it. */
static inline __attribute__((always_inline)) int reserve_layer(int i) {
    return alloc_leaf((1u << 20) + (size_t)i, /* the call in reserve_layer */
                      "reserve_layer [inlined],load_layer,load_model,main");
}

FRAME int load_layer(int i) {
    int ret = reserve_layer(i); /* the call in load_layer */
    sink += i;
    return ret;
}

FRAME int load_model(int layers) {
    int ret = 0;
    for (int i = 0; i < layers; i++)
        ret |= load_layer(i);
    sink += ret;
    return ret;
}

/* Recursion with large frames: the stack outgrows the copy taken at each call. */
FRAME int deep(int n) {
    volatile char pad[1024];
    pad[0] = (char)n;
    int ret = n == 0 ? alloc_leaf((3u << 20) + 7, "deep") : deep(n - 1);
    sink += pad[0];
    return ret;
}

FRAME int worker_step(int id, int step) {
    int ret = alloc_leaf((2u << 20) + (size_t)(id * 16 + step), "worker_step,thread_main");
    sink += step;
    return ret;
}

FRAME void *thread_main(void *arg) {
    int id = (int)(long)arg;
    set_current(context);
    for (int step = 0; step < 3; step++)
        worker_step(id, step);
    sink += id;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s LIBCUDA\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 2;
    }
    init_fn init = (init_fn)dlsym(lib, "cuInit");
    device_get_fn device_get = (device_get_fn)dlsym(lib, "cuDeviceGet");
    retain_fn retain = (retain_fn)dlsym(lib, "cuDevicePrimaryCtxRetain");
    set_current = (set_current_fn)dlsym(lib, "cuCtxSetCurrent");
    mem_alloc = (alloc_fn)dlsym(lib, "cuMemAlloc_v2");
    if (!init || !device_get || !retain || !set_current || !mem_alloc) {
        fprintf(stderr, "missing driver entry points\n");
        return 2;
    }
    int dev = 0;
    if (init(0) || device_get(&dev, 0) || retain(&context, dev) || set_current(context)) {
        fprintf(stderr, "driver set-up failed\n");
        return 2;
    }
    int ret = load_model(3);
    pthread_t threads[2];
    for (long id = 0; id < 2; id++)
        pthread_create(&threads[id], NULL, thread_main, (void *)id);
    for (int id = 0; id < 2; id++)
        pthread_join(threads[id], NULL);
    ret |= deep(24);
    return ret ? 1 : 0;
}
