// The C++ half of nativeext: a std::vector that grows through operator new.
#include <cstddef>
#include <vector>

static std::vector<long>* volatile keep_vector;

extern "C" __attribute__((noinline)) size_t nativeext_vector_grow(size_t n)
{
    auto* v = new std::vector<long>();
    for (size_t i = 0; i < n; i++) {
        v->push_back(static_cast<long>(i)); // ALLOC-LINE: nativeext_vector_grow
    }
    keep_vector = v;
    return v->capacity();
}
