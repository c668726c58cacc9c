// Allocations made after C++ exceptions were thrown and caught, built with -O2
// -fomit-frame-pointer: the stack is unwound from CFI, as the C++ runtime itself just did.
// Prints `BYTES PATH` per allocation, as alloc_paths.c does.
//
// Usage: throw_catch LIBCUDA
#include <dlfcn.h>

#include <cstdio>
#include <stdexcept>

#define FRAME __attribute__((noipa))

using alloc_fn = int (*)(unsigned long long *, size_t);
using init_fn = int (*)(unsigned);
using device_get_fn = int (*)(int *, int);
using retain_fn = int (*)(void **, int);
using set_current_fn = int (*)(void *);

static alloc_fn mem_alloc;
static volatile int sink;

FRAME int alloc_leaf(size_t bytes, const char *path) {
    unsigned long long dptr = 0;
    int ret = mem_alloc(&dptr, bytes);
    std::printf("%zu alloc_leaf,%s\n", bytes, path);
    std::fflush(stdout);
    sink += ret;
    return ret;
}

FRAME void parse_request(int id) {
    if (id % 2 == 0)
        throw std::runtime_error("malformed request");
    sink += id;
}

FRAME int handle_request(int id) {
    int ret;
    try {
        parse_request(id);
        ret = alloc_leaf((4u << 20) + id, "handle_request,serve,main");
    } catch (const std::exception &) {
        ret = alloc_leaf((5u << 20) + id, "handle_request,serve,main");
    }
    sink += id;
    return ret;
}

FRAME int serve(int requests) {
    int ret = 0;
    for (int id = 0; id < requests; id++)
        ret |= handle_request(id);
    sink += ret;
    return ret;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s LIBCUDA\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        std::fprintf(stderr, "%s\n", dlerror());
        return 2;
    }
    auto init = reinterpret_cast<init_fn>(dlsym(lib, "cuInit"));
    auto device_get = reinterpret_cast<device_get_fn>(dlsym(lib, "cuDeviceGet"));
    auto retain = reinterpret_cast<retain_fn>(dlsym(lib, "cuDevicePrimaryCtxRetain"));
    auto set_current = reinterpret_cast<set_current_fn>(dlsym(lib, "cuCtxSetCurrent"));
    mem_alloc = reinterpret_cast<alloc_fn>(dlsym(lib, "cuMemAlloc_v2"));
    if (!init || !device_get || !retain || !set_current || !mem_alloc) {
        std::fprintf(stderr, "missing driver entry points\n");
        return 2;
    }
    int dev = 0;
    void *context = nullptr;
    if (init(0) || device_get(&dev, 0) || retain(&context, dev) || set_current(context)) {
        std::fprintf(stderr, "driver set-up failed\n");
        return 2;
    }
    return serve(4) ? 1 : 0;
}
