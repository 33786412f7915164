// The torch binding's large outputs (torch_binding.cpp's fresh_output), kept mapped across calls. An output that
// torch frees (a table gradient once autograd has summed it into .grad or zero_grad has dropped it, a forward output
// once used) returns its block to this pool; the next output of the same size takes it back: no page faults and no
// zeroing of fresh pages by the OS. Before, the 364.5 MiB table gradient of resnet18's 512 -> 512 3x3 layer landed
// on fresh pages at every backward and the OS's zeroing of them (clear_page_erms) was 31% of that layer's
// forward+backward samples at batch 1 (Round 13, perf, 1 thread). Torch-only (the ONNX library does not include it).
#pragma once

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>

#include <cstdlib>
#include <new>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lmkan_pool {

constexpr size_t kHugePage = size_t{2} << 20;
// Outputs from this size on come from the pool; smaller ones from torch's allocator (glibc's heap reuses those).
constexpr size_t kPooledBytes = size_t{4} << 20;
// Freed bytes the pool keeps by default: the largest table gradient of resnet18's 3x3 layers (364.5 MiB) twice and
// then some; LMKAN_CPU_OUTPUT_POOL_MB overrides it (0: no pool, every output on fresh pages as before).
constexpr size_t kDefaultCapMiB = 1024;

// A block of `bytes` (a multiple of kHugePage), 2 MB aligned and marked MADV_HUGEPAGE (Linux, THP in "madvise"
// mode), so its first touch costs one page fault per 2 MB instead of one per 4 KB: the 144 MB table gradient of a
// 512 x 512 Linear at G = 16 took about 37k faults per backward on 4 KB pages (Round 5). Only a hint.
inline void* map_block(size_t bytes) {
    void* block = nullptr;
    if (posix_memalign(&block, kHugePage, bytes) != 0) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(block, bytes, MADV_HUGEPAGE);
#endif
    return block;
}

// Free blocks by size, oldest first, at most cap bytes in all; thread-safe (torch frees tensors on any thread).
class Pool {
public:
    explicit Pool(size_t cap) : cap_(cap) {}

    // A kept block of exactly `bytes` (the most recently freed), else a new one after dropping the oldest kept
    // blocks that would take the pool and this block together over the cap; nullptr when out of memory.
    void* take(size_t bytes) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            for (size_t i = free_.size(); i-- > 0;)
                if (free_[i].second == bytes) {
                    void* block = free_[i].first;
                    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
                    held_ -= bytes;
                    return block;
                }
            while (!free_.empty() && held_ + bytes > cap_) drop_oldest();
        }
        return map_block(bytes);
    }

    // Keeps a freed block (dropping the oldest beyond the cap: a block larger than the cap is freed at once).
    void give(void* block, size_t bytes) {
        std::lock_guard<std::mutex> lock(mutex_);
        free_.emplace_back(block, bytes);
        held_ += bytes;
        while (held_ > cap_) drop_oldest();
    }

    size_t held() {
        std::lock_guard<std::mutex> lock(mutex_);
        return held_;
    }

    // Frees every kept block.
    void release() {
        std::lock_guard<std::mutex> lock(mutex_);
        while (!free_.empty()) drop_oldest();
    }

private:
    void drop_oldest() {  // caller holds mutex_
        std::free(free_.front().first);
        held_ -= free_.front().second;
        free_.erase(free_.begin());
    }

    std::mutex mutex_;
    std::vector<std::pair<void*, size_t>> free_;
    size_t held_ = 0;
    const size_t cap_;
};

inline size_t cap_from_env() {
    const char* text = std::getenv("LMKAN_CPU_OUTPUT_POOL_MB");
    const size_t mib = text && *text ? std::strtoull(text, nullptr, 10) : kDefaultCapMiB;
    return mib << 20;
}

// The process's pool, never destroyed: tensors may be freed during interpreter shutdown, after static destructors.
inline Pool& pool() {
    static Pool* const the_pool = new Pool(cap_from_env());
    return *the_pool;
}

// A pool block in use: what its deleter gives back.
struct Block {
    void* data;
    size_t bytes;
};

inline void give_back(void* context) {
    const Block* block = static_cast<Block*>(context);
    pool().give(block->data, block->bytes);
    delete block;
}

// Torch's allocator for the binding's outputs: from kPooledBytes on a pool block (kHugePage multiples), below that
// torch's CPU allocator. An allocator rather than a blob keeps the storage resizable as torch::empty's.
class PoolAllocator final : public c10::Allocator {
public:
    c10::DataPtr allocate(size_t n) override {
        if (n < kPooledBytes) return c10::GetCPUAllocator()->allocate(n);
        const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
        void* data = pool().take(bytes);
        if (!data) throw std::bad_alloc();
        return {data, new Block{data, bytes}, &give_back, c10::Device(c10::DeviceType::CPU)};
    }

    void copy_data(void* dest, const void* src, std::size_t count) const override {
        default_copy_data(dest, src, count);
    }
};

// An uninitialised CPU tensor of `sizes`, `strides` and `dtype` (float32 for outputs) on PoolAllocator's memory.
inline torch::Tensor pooled_empty(at::IntArrayRef sizes, at::IntArrayRef strides,
                                  at::ScalarType dtype = at::kFloat) {
    static PoolAllocator* const allocator = new PoolAllocator();  // never destroyed, as the pool
    return at::detail::empty_strided_generic(sizes, strides, allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                             dtype);
}

// A contiguous copy of a CPU tensor (any dtype) on PoolAllocator's memory: from kPooledBytes on, 2 MB aligned
// MADV_HUGEPAGE pages. For the layers' tables, which the kernels stream: on 4 KB pages the 14x14x256 3x3 forward
// at batch 1 took 12.3 ms against 10.3 on 2 MB pages (Round 13, 1 thread, medians of 15 interleaved calls).
inline torch::Tensor huge_page_copy(const torch::Tensor& source) {
    TORCH_CHECK(source.device().is_cpu(), "huge_page_copy needs a CPU tensor");
    const auto strides = c10::contiguous_strides(source.sizes());
    auto copy = pooled_empty(source.sizes(), {strides.begin(), strides.end()}, source.scalar_type());
    copy.copy_(source);
    return copy;
}

}  // namespace lmkan_pool
