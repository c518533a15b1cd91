// runner_cm.cpp - edgelm's runner for a bare-metal Cortex-M board with an Ethos-U NPU.
//
// The program (.pte) is linked into the firmware (program.S, placed by memory.ld in the board's
// program memory) and loaded in place through a BufferDataLoader: nothing is copied. Its planned
// buffers and the method's own allocations come from the tensor arena (ARENA_BYTES, from the
// manifest's arm.budget), the Ethos-U delegate's scratch from the NPU scratch region (temp
// allocator). Then the same serial protocol as the Linux runner (cm_server.c over frame.c,
// protocol.c and sampler.c) is served on the board's UART.
//
// The method is fed one token per call (the Arm program's tokens_per_call 1):
//   forward(tokens int64 [1, 1], input_pos int64 [1]) -> logits float [..., vocab_size]
// and the last vocab_size values of output 0 are the next token's logits.
//
// A failure before HELLO (no program, it does not load, the arena is too small) is sent as an
// ERROR frame (RUNTIME) with the reason, and the board stops: the host prints it.

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/core/memory_allocator.h>
#include <executorch/runtime/core/span.h>
#include <executorch/runtime/executor/memory_manager.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/method_meta.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/runtime.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>

#include "board.h"
#include "board_config.h"
#include "cm_server.h"
#include "frame.h"
#include "protocol.h"
#include "sha256.h"
#include "uart_cmsdk.h"

// Regions from memory.ld
extern "C" uint8_t __arena_start[], __arena_end[];
extern "C" uint8_t __npu_scratch_start[], __npu_scratch_end[];

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::BufferDataLoader;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::HierarchicalAllocator;
using executorch::runtime::MemoryAllocator;
using executorch::runtime::MemoryManager;
using executorch::runtime::Method;
using executorch::runtime::MethodMeta;
using executorch::runtime::Program;
using executorch::runtime::Result;
using executorch::runtime::Span;

constexpr const char* kMethod = "forward";
constexpr size_t kMaxPlannedBuffers = 16;  // memory ids a program may plan
constexpr size_t kBufferAlign = 16;        // bytes; the Ethos-U wants 16-byte aligned tensors

// ----------------------------------------------------------------------------
// The loaded program. Program and Method live in static storage (no heap): constructed in place
// once, never destroyed (the firmware does not exit).

struct Runtime {
  Program* program = nullptr;
  Method* method = nullptr;
  uint32_t vocab = 0;
  int64_t tokens[1] = {0};
  int64_t input_pos[1] = {0};
};

alignas(Program) uint8_t g_program_storage[sizeof(Program)];
alignas(Method) uint8_t g_method_storage[sizeof(Method)];
alignas(BufferDataLoader) uint8_t g_loader_storage[sizeof(BufferDataLoader)];
alignas(MemoryAllocator) uint8_t g_arena_storage[sizeof(MemoryAllocator)];
alignas(MemoryAllocator) uint8_t g_scratch_storage[sizeof(MemoryAllocator)];
alignas(HierarchicalAllocator) uint8_t g_planned_storage[sizeof(HierarchicalAllocator)];
alignas(MemoryManager) uint8_t g_manager_storage[sizeof(MemoryManager)];
Span<uint8_t> g_planned_spans[kMaxPlannedBuffers];
Runtime g_rt;

size_t region_bytes(const uint8_t* start, const uint8_t* end) { return (size_t)(end - start); }

// Loads the program from program memory into g_rt. Returns 0, or -1 with the reason in err.
int build_runtime(Runtime* rt, const uint8_t* pte, size_t pte_len, char* err, size_t err_cap) {
  if (pte_len == 0) {
    std::snprintf(err, err_cap, "no program linked into the firmware");
    return -1;
  }
  auto* loader = new (g_loader_storage) BufferDataLoader(pte, pte_len);
  Result<Program> program = Program::load(loader, Program::Verification::InternalConsistency);
  if (!program.ok()) {
    std::snprintf(err, err_cap, "program (%lu bytes) does not load (error 0x%x)", (unsigned long)pte_len,
                  (unsigned)program.error());
    return -1;
  }
  rt->program = new (g_program_storage) Program(std::move(program.get()));
  Result<MethodMeta> meta = rt->program->method_meta(kMethod);
  if (!meta.ok()) {
    std::snprintf(err, err_cap, "program has no method '%s'", kMethod);
    return -1;
  }
  if (meta->num_inputs() != 2) {
    std::snprintf(err, err_cap, "method '%s' takes %lu inputs; expected 2 (tokens, input_pos)", kMethod,
                  (unsigned long)meta->num_inputs());
    return -1;
  }

  const size_t arena_len = region_bytes(__arena_start, __arena_end);
  auto* arena = new (g_arena_storage) MemoryAllocator((uint32_t)arena_len, __arena_start);
  const size_t n_planned = meta->num_memory_planned_buffers();
  if (n_planned > kMaxPlannedBuffers) {
    std::snprintf(err, err_cap, "program plans %lu buffers; this firmware holds %lu", (unsigned long)n_planned,
                  (unsigned long)kMaxPlannedBuffers);
    return -1;
  }
  for (size_t i = 0; i < n_planned; i++) {
    Result<int64_t> size = meta->memory_planned_buffer_size(i);
    if (!size.ok() || size.get() < 0) {
      std::snprintf(err, err_cap, "planned buffer %lu has no size", (unsigned long)i);
      return -1;
    }
    void* p = arena->allocate((size_t)size.get(), kBufferAlign);
    if (p == nullptr) {
      std::snprintf(err, err_cap, "planned buffer %lu (%" PRId64 " bytes) does not fit the arena of %lu bytes",
                    (unsigned long)i, size.get(), (unsigned long)arena_len);
      return -1;
    }
    g_planned_spans[i] = Span<uint8_t>((uint8_t*)p, (size_t)size.get());
  }
  auto* planned = new (g_planned_storage) HierarchicalAllocator({g_planned_spans, n_planned});
  auto* scratch = new (g_scratch_storage)
      MemoryAllocator((uint32_t)region_bytes(__npu_scratch_start, __npu_scratch_end), __npu_scratch_start);
  // The rest of the arena is the method allocator (its tensors, the delegate's handles).
  auto* manager = new (g_manager_storage) MemoryManager(arena, planned, scratch);
  Result<Method> method = rt->program->load_method(kMethod, manager);
  if (!method.ok()) {
    std::snprintf(err, err_cap, "method '%s' does not load (error 0x%x); arena %lu bytes, NPU scratch %lu bytes",
                  kMethod, (unsigned)method.error(), (unsigned long)arena_len,
                  (unsigned long)region_bytes(__npu_scratch_start, __npu_scratch_end));
    return -1;
  }
  rt->method = new (g_method_storage) Method(std::move(method.get()));
  rt->vocab = VOCAB_SIZE;
  return 0;
}

// ----------------------------------------------------------------------------
// One forward call (CmForwardFn)

int forward(void* model, uint32_t token, uint32_t pos, const float** logits, char* why, size_t why_cap) {
  Runtime* rt = static_cast<Runtime*>(model);
  rt->tokens[0] = (int64_t)token;
  rt->input_pos[0] = (int64_t)pos;
  TensorImpl::SizesType tok_sizes[2] = {1, 1};
  TensorImpl::DimOrderType tok_order[2] = {0, 1};
  TensorImpl::StridesType tok_strides[2] = {1, 1};
  TensorImpl tok_impl(ScalarType::Long, 2, tok_sizes, rt->tokens, tok_order, tok_strides);
  TensorImpl::SizesType pos_sizes[1] = {1};
  TensorImpl::DimOrderType pos_order[1] = {0};
  TensorImpl::StridesType pos_strides[1] = {1};
  TensorImpl pos_impl(ScalarType::Long, 1, pos_sizes, rt->input_pos, pos_order, pos_strides);

  Error e = rt->method->set_input(EValue(Tensor(&tok_impl)), 0);
  if (e != Error::Ok) {
    std::snprintf(why, why_cap, "set_input(tokens) failed (error 0x%x)", (unsigned)e);
    return -1;
  }
  e = rt->method->set_input(EValue(Tensor(&pos_impl)), 1);
  if (e != Error::Ok) {
    std::snprintf(why, why_cap, "set_input(input_pos) failed (error 0x%x)", (unsigned)e);
    return -1;
  }
  e = rt->method->execute();
  if (e != Error::Ok) {
    std::snprintf(why, why_cap, "execute failed (error 0x%x)", (unsigned)e);
    return -1;
  }
  const EValue& out = rt->method->get_output(0);
  if (!out.isTensor() || out.toTensor().scalar_type() != ScalarType::Float ||
      out.toTensor().numel() < (ssize_t)rt->vocab) {
    std::snprintf(why, why_cap, "output 0 is not float logits with at least %lu values", (unsigned long)rt->vocab);
    return -1;
  }
  Tensor t = out.toTensor();
  *logits = t.const_data_ptr<float>() + (t.numel() - (ssize_t)rt->vocab);
  return 0;
}

// ----------------------------------------------------------------------------
// The link on the UART

int uart_in(void* io) { return uart_read_byte(static_cast<CmsdkUart*>(io)); }
void uart_out(void* io, const uint8_t* p, size_t n) { uart_write(static_cast<CmsdkUart*>(io), p, n); }
uint64_t clock_us(void*) { return board_now_us(); }

// Before there is a session: one ERROR frame (seq 0) with the reason, then stop.
[[noreturn]] void fail_before_hello(CmsdkUart* uart, const char* reason) {
  static uint8_t body[PROTO_MAX_ERROR_MESSAGE + 8];
  static uint8_t wire[FRAME_MAX_WIRE];
  long n = proto_pack_error(body, sizeof body, ERR_RUNTIME, reason);
  long w = n > 0 ? frame_encode(MSG_ERROR, 0, body, (size_t)n, wire, sizeof wire) : -1;
  if (w > 0) uart_write(uart, wire, (size_t)w);
  board_halt();
}

CmServer g_server;

}  // namespace

int main() {
  CmsdkUart* uart = board_uart();
  if (uart_init(uart, UART_PCLK_HZ, UART_BAUD) != 0) board_halt();
  executorch::runtime::runtime_init();
  const uint64_t t0 = board_now_us();

  size_t pte_len = 0;
  const uint8_t* pte = board_program(&pte_len);
  char err[PROTO_MAX_ERROR_MESSAGE];
  if (build_runtime(&g_rt, pte, pte_len, err, sizeof err) != 0) fail_before_hello(uart, err);

  CmModel model;
  std::memset(&model, 0, sizeof model);
  model.forward = forward;
  model.model = &g_rt;
  model.vocab_size = VOCAB_SIZE;
  model.max_seq_len = MAX_SEQ_LEN;
  Sha256 h;
  sha256_init(&h);
  sha256_update(&h, pte, pte_len);
  sha256_final(&h, model.sha256);
  model.load_ms = (float)(board_now_us() - t0) / 1000.0f;

  CmLink link = {uart_in, uart_out, clock_us, uart};
  const char* why = nullptr;
  if (build_cm_server(&g_server, &link, &model, "edgelm-cm " EDGELM_FIRMWARE_VERSION, EDGELM_BOARD, &why) != 0)
    fail_before_hello(uart, why);
  cm_start(&g_server);
  for (;;) (void)cm_serve_one(&g_server);
}
