// runner.cpp - edgelm board runner: serves one ExecuTorch LLM program over a serial link
// (docs/protocol.md).
//
//   runner --model PATH [--serial DEV|-] [--baud N] [--threads N] [--draft N] [--verbose]
//
// Loads the .pte, opens the link, sends HELLO, then answers REQUEST frames with TOKEN
// frames and a STATS frame until QUIT. Defaults come from board_config.h.
// The link is a tty (raw, exclusive) or, with `--serial -`, stdin and stdout as they are
// (pipes, an SSH channel): frames are read from fd 0 and written to fd 1, and fd 1 is then
// pointed at stderr so that nothing else can write into the frame stream. Logs go to stderr.
// Exit status: 0 QUIT, 2 usage, 3 model cannot be loaded, 4 serial device cannot be
// opened, 6 link lost (end of file or I/O error on the tty or stdin/stdout).

#include <executorch/extension/data_loader/mmap_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/core/memory_allocator.h>
#include <executorch/runtime/executor/memory_manager.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/method_meta.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "board_config.h"
#include "draft.h"
#include "frame.h"
#include "protocol.h"
#include "sampler.h"
#include "serial.h"
#include "sha256.h"
#ifdef EDGELM_TEST_LIES
#include "lies.h"  // tests only: lies chosen by EDGELM_TEST_LIE at start-up
#endif

// threadpool.h is not shipped in the wheel, but libexecutorch_threadpool.so exports
// these. Itanium mangling of non-template functions does not encode the return type,
// so this minimal redeclaration links against the real definitions.
namespace executorch::extension::threadpool {
class ThreadPool final {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
  size_t get_thread_count() const;
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::MallocMemoryAllocator;
using executorch::extension::MmapDataLoader;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::HierarchicalAllocator;
using executorch::runtime::MemoryManager;
using executorch::runtime::Method;
using executorch::runtime::MethodMeta;
using executorch::runtime::Program;
using executorch::runtime::Result;
using executorch::runtime::Span;

namespace {

// Exit statuses (the host maps these to messages).
constexpr int EXIT_OK = 0;
constexpr int EXIT_USAGE = 2;
constexpr int EXIT_MODEL = 3;
constexpr int EXIT_SERIAL = 4;
constexpr int EXIT_LINK_LOST = 6;

constexpr const char* METHOD_NAME = "forward";
// A program exported with a draft model (edgelm export --draft-model) carries it as this method:
// the same inputs and outputs as forward, its own state, a fraction of the weights.
constexpr const char* DRAFT_METHOD_NAME = "draft";
// The draft model drafts greedily and stops at the first token it gives less than this probability:
// an unlikely draft token is seldom accepted and costs a draft call and a wider verifying call.
// Measured with fortune-draft for fortune (benchmarks/quality.py, projected bandwidth-bound speed-up):
// 0.5 -> 1.33x (77% accepted), 0.3 -> 1.40x (69%), 0.15 -> 1.31x (48%), 0.05 -> 0.93x (18%).
constexpr float DRAFT_MIN_P = 0.3f;

// ----------------------------------------------------------------------------
// Logging: one line per event on stderr, "edgelm-runner: ..."

bool g_verbose = false;
// While the model loads, ExecuTorch's own warnings and errors are held back (the last one)
// so that a load failure is reported as one line that includes it.
bool g_pal_hold = false;
char g_pal_held[256] = "";

__attribute__((format(printf, 1, 2))) void log_line(const char* fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "edgelm-runner: %s\n", line);
}

// ExecuTorch PAL log hook: Debug/Info only with --verbose (the threadpool's cpuinfo
// chatter, for one); warnings and errors always, as one of our lines.
void pal_log(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*,
             size_t line, const char* message, size_t length) {
  if (!g_verbose && (level == kDebug || level == kInfo)) return;
  while (length > 0 && (message[length - 1] == '\n' || message[length - 1] == '\r')) length--;
  if (g_pal_hold && !g_verbose) {
    std::snprintf(g_pal_held, sizeof g_pal_held, "%.*s", (int)length, message);
    return;
  }
  const char* base = std::strrchr(filename, '/');
  std::fprintf(stderr, "edgelm-runner: [executorch %c %s:%zu] %.*s\n", (char)level,
               base ? base + 1 : filename, line, (int)length, message);
}

// ----------------------------------------------------------------------------
// Clock

uint64_t now_us() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

// Peak resident set size of this program, kilobytes. getrusage's ru_maxrss survives
// execve(), so a runner started by a large parent (a Python host with torch loaded)
// would report the parent's size: VmHWM from /proc/self/status is used where it exists.
uint64_t peak_rss_kb() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f) {
    char line[256];
    unsigned long long kb = 0;
    bool found = false;
    while (!found && std::fgets(line, sizeof line, f))
      found = std::sscanf(line, "VmHWM: %llu kB", &kb) == 1;
    std::fclose(f);
    if (found) return kb;
  }
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return ru.ru_maxrss > 0 ? (uint64_t)ru.ru_maxrss : 0;  // kilobytes on Linux
}

// ----------------------------------------------------------------------------
// Options

// `--serial -`: the link is stdin (frames in) and stdout (frames out).
constexpr const char* SERIAL_STDIO = "-";

struct Options {
  const char* model = nullptr;                  // .pte path
  const char* serial = EDGELM_SERIAL_DEVICE;    // tty path, or SERIAL_STDIO
  long baud = EDGELM_BAUD;                      // bits per second
  long threads = EDGELM_THREADS;                // 0 = ExecuTorch's default
  long draft = -1;                              // most draft tokens per call; -1 = the program's
  bool draft_context = true;                    // --draft-from: drafts from the context (prompt lookup)
  bool draft_model = true;                      //   and from the program's draft method, if it has one
  bool verbose = false;
};

void print_usage(FILE* f) {
  std::fprintf(f,
               "usage: runner --model PATH [--serial DEV|-] [--baud N] [--threads N] [--draft N]\n"
               "              [--draft-from context|model|both] [--verbose]\n"
               "  --model PATH   ExecuTorch program (.pte) to serve\n"
               "  --serial DEV   serial device (default %s); '-' = frames on stdin/stdout\n"
               "                 (pipes, an SSH channel; logs stay on stderr)\n"
               "  --baud N       bits per second of the serial device (default %ld)\n"
               "  --threads N    threadpool size, 0 = ExecuTorch default (default %ld)\n"
               "  --draft N      most speculative draft tokens per forward call, 0 = none\n"
               "                 (default: what the program can verify, see docs/protocol.md)\n"
               "  --draft-from S draft from the context, the program's draft model, or both\n"
               "                 (default both: the context first)\n"
               "  --verbose      also log ExecuTorch debug and info messages\n"
               "board %s, firmware %s, protocol %d\n"
               "exit status: 0 quit, 2 usage, 3 model cannot be loaded, "
               "4 serial device cannot be opened, 6 link lost\n",
               EDGELM_SERIAL_DEVICE, (long)EDGELM_BAUD, (long)EDGELM_THREADS, EDGELM_BOARD,
               EDGELM_FIRMWARE_VERSION, PROTO_VERSION);
}

bool parse_long(const char* s, long lo, long hi, long* out) {
  if (!s || !*s) return false;
  errno = 0;
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

// Returns -1 to go on, or the exit status (0 for --help).
int parse_options(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; i++) {
    const char* a = argv[i];
    const char* value = (i + 1 < argc) ? argv[i + 1] : nullptr;
    if (std::strcmp(a, "--help") == 0 || std::strcmp(a, "-h") == 0) {
      print_usage(stdout);
      return EXIT_OK;
    } else if (std::strcmp(a, "--verbose") == 0) {
      o->verbose = true;
      continue;
    }
    const bool takes_value = std::strcmp(a, "--model") == 0 || std::strcmp(a, "--serial") == 0 ||
                             std::strcmp(a, "--baud") == 0 || std::strcmp(a, "--threads") == 0 ||
                             std::strcmp(a, "--draft") == 0 || std::strcmp(a, "--draft-from") == 0;
    if (!takes_value) {
      log_line("unknown argument %s (see --help)", a);
      return EXIT_USAGE;
    }
    if (!value) {
      log_line("%s needs a value (see --help)", a);
      return EXIT_USAGE;
    }
    if (std::strcmp(a, "--model") == 0) {
      o->model = value;
    } else if (std::strcmp(a, "--serial") == 0) {
      o->serial = value;
    } else if (std::strcmp(a, "--baud") == 0) {
      if (!parse_long(value, 1, 100000000, &o->baud) || !serial_baud_supported(o->baud)) {
        log_line("--baud %s is not a supported baud rate (e.g. 115200, 921600, 3000000)", value);
        return EXIT_USAGE;
      }
    } else if (std::strcmp(a, "--threads") == 0) {
      if (!parse_long(value, 0, 1024, &o->threads)) {
        log_line("--threads %s is not a number in 0..1024", value);
        return EXIT_USAGE;
      }
    } else if (std::strcmp(a, "--draft") == 0) {
      if (!parse_long(value, 0, 1024, &o->draft)) {
        log_line("--draft %s is not a number in 0..1024", value);
        return EXIT_USAGE;
      }
    } else if (std::strcmp(a, "--draft-from") == 0) {
      const bool both = std::strcmp(value, "both") == 0;
      o->draft_context = both || std::strcmp(value, "context") == 0;
      o->draft_model = both || std::strcmp(value, "model") == 0;
      if (!o->draft_context && !o->draft_model) {
        log_line("--draft-from %s is not one of context, model, both", value);
        return EXIT_USAGE;
      }
    }
    i++;
  }
  if (!o->model) {
    log_line("--model PATH is required (see --help)");
    return EXIT_USAGE;
  }
  if (!o->serial || !*o->serial) {
    log_line("--serial DEV is required: this firmware was built without a default");
    return EXIT_USAGE;
  }
  return -1;
}

// ----------------------------------------------------------------------------
// Model: one loaded "forward" Method and its memory.
// Inputs: tokens int64 [1, T] with 1 <= T <= max_seq_len, input_pos int64 [1], and in programs
// that attend only over the filled part of their caches, key_positions int64 [input_pos + T]
// holding 0, 1, ..., input_pos + T - 1 (its length is the attention's bound), and in programs
// that verify speculative drafts, logit_rows int64 [R], 1 <= R <= max_rows: the positions of the
// chunk whose logits come back.
// Output 0: float logits, [1, V] or [1, R, V] (the last R * V floats, row by row).
// A call at input_pos 0 starts a new sequence; a rewindable program (one with logit_rows) may
// start up to max_rows - 1 positions before the end of the last call (a rejected draft).

// One method of the program: its shapes, its memory plan (its state lives there) and its inputs.
struct Fn {
  int64_t max_seq_len = 0;  // tokens: upper bound of input 0, dim 1
  int64_t vocab = 0;        // V: last dim of output 0

  // ExecuTorch objects; the Method refers to all of them, so they stay in place.
  // [n buffers][bytes]. calloc, not a zero-filled vector: the arena is planned for the largest
  // chunk (T = max_seq_len), and pages a run never touches should not be resident.
  std::vector<std::unique_ptr<uint8_t, decltype(&std::free)>> planned;
  std::vector<Span<uint8_t>> planned_spans;      // [n buffers]
  std::unique_ptr<HierarchicalAllocator> planned_allocator;
  std::unique_ptr<MallocMemoryAllocator> method_allocator;
  std::unique_ptr<MallocMemoryAllocator> temp_allocator;
  std::unique_ptr<MemoryManager> memory;
  std::unique_ptr<Method> method;

  // Input storage; the Method may point at it while executing.
  std::vector<int64_t> tokens;  // [max_seq_len]
  int64_t input_pos[1] = {0};
  bool key_input = false;              // the method takes key_positions (input 2)
  std::vector<int64_t> key_positions;  // [max_seq_len]: 0, 1, ..., max_seq_len - 1
  bool rows_input = false;             // the method takes logit_rows (input 3)
  int64_t max_rows = 1;                // most logit rows per call: the longest draft + 1
  std::vector<int64_t> rows;           // [max_rows]
};

struct Model {
  int64_t max_seq_len = 0;  // of the forward method
  int64_t vocab = 0;
  int64_t max_rows = 1;
  float load_ms = 0;        // Program::load + load_method(s), milliseconds
  uint32_t threads = 0;     // threadpool size in use
  uint8_t sha256[SHA256_DIGEST_LEN] = {};

  std::unique_ptr<MmapDataLoader> loader;
  std::unique_ptr<Program> program;
  Fn fwd;                   // "forward": the model
  Fn draft;                 // "draft": a smaller model of the same vocabulary, if the program has one
  bool has_draft = false;
};

// Checks the method's signature and loads it with its own planned memory. Returns 0, or -1
// with one line (no prefix) in err.
int load_fn(Program* program, Fn* f, const char* name, const char* path, char* err, size_t err_cap) {
  Result<MethodMeta> meta = program->method_meta(name);
  if (!meta.ok()) {
    std::snprintf(err, err_cap, "%s has no '%s' method (error 0x%x)", path, name, (unsigned)meta.error());
    return -1;
  }
  const char* shape_error = nullptr;
  if (meta->num_inputs() < 2 || meta->num_outputs() < 1) shape_error = "too few inputs or outputs";
  auto tok_meta = meta->input_tensor_meta(0);
  auto pos_meta = meta->input_tensor_meta(1);
  auto out_meta = meta->output_tensor_meta(0);
  if (!shape_error && (!tok_meta.ok() || !pos_meta.ok() || !out_meta.ok()))
    shape_error = "an input or output is not a tensor";
  if (!shape_error && (tok_meta->sizes().size() != 2 || tok_meta->scalar_type() != ScalarType::Long))
    shape_error = "input 0 is not int64 tokens [1, T]";
  if (!shape_error && pos_meta->scalar_type() != ScalarType::Long)
    shape_error = "input 1 is not int64 input_pos";
  if (!shape_error && (out_meta->sizes().size() < 1 || out_meta->scalar_type() != ScalarType::Float))
    shape_error = "output 0 is not float logits";
  if (!shape_error && meta->num_inputs() >= 3) {
    auto key_meta = meta->input_tensor_meta(2);
    if (!key_meta.ok() || key_meta->sizes().size() != 1 || key_meta->scalar_type() != ScalarType::Long ||
        key_meta->sizes()[0] != tok_meta->sizes()[1])
      shape_error = "input 2 is not int64 key_positions [input_pos + T] bounded by max_seq_len";
    f->key_input = true;
  }
  if (!shape_error && meta->num_inputs() >= 4) {
    auto rows_meta = meta->input_tensor_meta(3);
    if (!rows_meta.ok() || rows_meta->sizes().size() != 1 || rows_meta->scalar_type() != ScalarType::Long ||
        rows_meta->sizes()[0] < 1 || rows_meta->sizes()[0] > tok_meta->sizes()[1])
      shape_error = "input 3 is not int64 logit_rows [R] with R at most max_seq_len";
    else
      f->max_rows = rows_meta->sizes()[0];
    f->rows_input = true;
  }
  if (!shape_error && meta->num_inputs() > 4) shape_error = "takes more than 4 inputs";
  if (shape_error) {
    std::snprintf(err, err_cap, "%s is not an edgelm LLM program: '%s' %s", path, name, shape_error);
    return -1;
  }
  f->max_seq_len = tok_meta->sizes()[1];
  f->vocab = out_meta->sizes()[out_meta->sizes().size() - 1];
  if (f->max_seq_len < 1 || f->vocab < 1 || f->vocab > (int64_t)UINT32_MAX) {
    std::snprintf(err, err_cap, "%s has unusable shapes in '%s': max_seq_len %" PRId64 ", vocab %" PRId64,
                  path, name, f->max_seq_len, f->vocab);
    return -1;
  }

  for (size_t i = 0; i < meta->num_memory_planned_buffers(); i++) {
    Result<int64_t> size = meta->memory_planned_buffer_size(i);
    if (!size.ok() || *size < 0) {
      std::snprintf(err, err_cap, "%s: bad planned buffer %zu of '%s'", path, i, name);
      return -1;
    }
    uint8_t* bytes = (uint8_t*)std::calloc(*size > 0 ? (size_t)*size : 1, 1);  // zeroed, as the plan expects
    if (!bytes) {
      std::snprintf(err, err_cap, "%s: out of memory for planned buffer %zu of '%s' (%" PRId64 " bytes)", path, i,
                    name, *size);
      return -1;
    }
    f->planned.emplace_back(bytes, &std::free);
    f->planned_spans.emplace_back(bytes, (size_t)*size);
  }
  f->planned_allocator = std::make_unique<HierarchicalAllocator>(
      Span<Span<uint8_t>>(f->planned_spans.data(), f->planned_spans.size()));
  f->method_allocator = std::make_unique<MallocMemoryAllocator>();
  f->temp_allocator = std::make_unique<MallocMemoryAllocator>();
  f->memory = std::make_unique<MemoryManager>(f->method_allocator.get(), f->planned_allocator.get(),
                                              f->temp_allocator.get());
  Result<Method> method = program->load_method(name, f->memory.get());
  if (!method.ok()) {
    std::snprintf(err, err_cap, "%s: cannot load method '%s' (load_method error 0x%x)", path, name,
                  (unsigned)method.error());
    return -1;
  }
  f->method = std::make_unique<Method>(std::move(method.get()));
  f->tokens.assign((size_t)f->max_seq_len, 0);
  f->key_positions.resize((size_t)f->max_seq_len);
  for (int64_t i = 0; i < f->max_seq_len; i++) f->key_positions[(size_t)i] = i;
  f->rows.assign((size_t)f->max_rows, 0);
  return 0;
}

void free_fn(Fn* f) {
  f->method.reset();  // before the memory it uses
  f->memory.reset();
  f->temp_allocator.reset();
  f->method_allocator.reset();
  f->planned_allocator.reset();
  f->planned_spans.clear();
  f->planned.clear();
}

// Loads the program: its forward method, and its draft method if it has one. Returns 0, or -1
// with one line (no prefix) in err.
int build_model(Model* m, const char* path, long threads, char* err, size_t err_cap) {
  if (sha256_file(path, m->sha256) != 0) {
    std::snprintf(err, err_cap, "cannot read model %s: %s", path, std::strerror(errno));
    return -1;
  }
  if (threads > 0) {  // before any method load: XNNPACK takes the pthreadpool at init
    executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool((uint32_t)threads);
  }
  m->threads = (uint32_t)executorch::extension::threadpool::get_threadpool()->get_thread_count();

  uint64_t t0 = now_us();
  // UseMlock (the default) fails the load when mlock() fails, e.g. under a low
  // RLIMIT_MEMLOCK on a board; lock if possible, go on if not.
  Result<MmapDataLoader> loader =
      MmapDataLoader::from(path, MmapDataLoader::MlockConfig::UseMlockIgnoreErrors);
  if (!loader.ok()) {
    std::snprintf(err, err_cap, "cannot map model %s (MmapDataLoader error 0x%x)", path,
                  (unsigned)loader.error());
    return -1;
  }
  m->loader = std::make_unique<MmapDataLoader>(std::move(loader.get()));
  Result<Program> program = Program::load(m->loader.get(), Program::Verification::InternalConsistency);
  if (!program.ok()) {
    std::snprintf(err, err_cap, "%s is not an ExecuTorch program (Program::load error 0x%x)", path,
                  (unsigned)program.error());
    return -1;
  }
  m->program = std::make_unique<Program>(std::move(program.get()));
  if (load_fn(m->program.get(), &m->fwd, METHOD_NAME, path, err, err_cap) != 0) return -1;
  m->max_seq_len = m->fwd.max_seq_len;
  m->vocab = m->fwd.vocab;
  m->max_rows = m->fwd.max_rows;
  if (m->program->method_meta(DRAFT_METHOD_NAME).ok()) {
    if (load_fn(m->program.get(), &m->draft, DRAFT_METHOD_NAME, path, err, err_cap) != 0) return -1;
    // The draft must speak the model's tokens, reach as far, and rewind as far as a draft is long.
    if (m->draft.vocab != m->vocab || m->draft.max_seq_len != m->max_seq_len || !m->draft.rows_input ||
        m->draft.max_rows < m->max_rows) {
      std::snprintf(err, err_cap, "%s: method '%s' does not fit '%s' (vocab %" PRId64 " vs %" PRId64
                    ", max_seq_len %" PRId64 " vs %" PRId64 ", rewind %" PRId64 " vs %" PRId64 ")",
                    path, DRAFT_METHOD_NAME, METHOD_NAME, m->draft.vocab, m->vocab, m->draft.max_seq_len,
                    m->max_seq_len, m->draft.max_rows - 1, m->max_rows - 1);
      return -1;
    }
    m->has_draft = true;
  }
  m->load_ms = (float)(now_us() - t0) / 1000.0f;
  return 0;
}

void free_model(Model* m) {
  free_fn(&m->draft);
  free_fn(&m->fwd);
  m->program.reset();
  m->loader.reset();
}

// One forward call of method f on tokens[0 .. n-1] at input_pos pos. all_rows false: on success
// *logits points at the V logits of the last position; true (a draft's verification, n <=
// max_rows): at n rows of V logits, the one after each token. Valid until the next call. On
// failure returns the error and writes which step failed into where.
Error fn_forward(Fn* m, const uint32_t* toks, int64_t n, int64_t pos, bool all_rows,
                 const float** logits, char* where, size_t where_cap) {
  if (n < 1 || n > m->max_seq_len) {
    std::snprintf(where, where_cap, "%" PRId64 " tokens do not fit max_seq_len %" PRId64, n,
                  m->max_seq_len);
    return Error::InvalidArgument;
  }
  const int64_t n_rows = all_rows ? n : 1;
  if (n_rows > m->max_rows) {
    std::snprintf(where, where_cap, "%" PRId64 " logit rows asked of a program that returns at most %" PRId64,
                  n_rows, m->max_rows);
    return Error::InvalidArgument;
  }
  if (pos < 0 || pos > m->max_seq_len - n) {
    std::snprintf(where, where_cap, "positions %" PRId64 "..%" PRId64 " do not fit max_seq_len %" PRId64,
                  pos, pos + n, m->max_seq_len);
    return Error::InvalidArgument;
  }
  for (int64_t i = 0; i < n; i++) m->tokens[(size_t)i] = (int64_t)toks[i];
  m->input_pos[0] = pos;

  TensorImpl::SizesType tok_sizes[2] = {1, (TensorImpl::SizesType)n};
  TensorImpl::DimOrderType tok_order[2] = {0, 1};
  TensorImpl::StridesType tok_strides[2] = {(TensorImpl::StridesType)n, 1};
  TensorImpl tok_impl(ScalarType::Long, 2, tok_sizes, m->tokens.data(), tok_order, tok_strides);
  TensorImpl::SizesType pos_sizes[1] = {1};
  TensorImpl::DimOrderType pos_order[1] = {0};
  TensorImpl::StridesType pos_strides[1] = {1};
  TensorImpl pos_impl(ScalarType::Long, 1, pos_sizes, m->input_pos, pos_order, pos_strides);

  Error e = m->method->set_input(EValue(Tensor(&tok_impl)), 0);
  if (e != Error::Ok) {
    std::snprintf(where, where_cap, "set_input(tokens) failed (error 0x%x)", (unsigned)e);
    return e;
  }
  e = m->method->set_input(EValue(Tensor(&pos_impl)), 1);
  if (e != Error::Ok) {
    std::snprintf(where, where_cap, "set_input(input_pos) failed (error 0x%x)", (unsigned)e);
    return e;
  }
  TensorImpl::SizesType key_sizes[1] = {(TensorImpl::SizesType)(pos + n)};
  TensorImpl key_impl(ScalarType::Long, 1, key_sizes, m->key_positions.data(), pos_order, pos_strides);
  if (m->key_input) {
    e = m->method->set_input(EValue(Tensor(&key_impl)), 2);
    if (e != Error::Ok) {
      std::snprintf(where, where_cap, "set_input(key_positions) failed (error 0x%x)", (unsigned)e);
      return e;
    }
  }
  for (int64_t i = 0; i < n_rows; i++) m->rows[(size_t)i] = all_rows ? i : n - 1;
  TensorImpl::SizesType rows_sizes[1] = {(TensorImpl::SizesType)n_rows};
  TensorImpl rows_impl(ScalarType::Long, 1, rows_sizes, m->rows.data(), pos_order, pos_strides);
  if (m->rows_input) {
    e = m->method->set_input(EValue(Tensor(&rows_impl)), 3);
    if (e != Error::Ok) {
      std::snprintf(where, where_cap, "set_input(logit_rows) failed (error 0x%x)", (unsigned)e);
      return e;
    }
  }
  e = m->method->execute();
  if (e != Error::Ok) {
    std::snprintf(where, where_cap, "execute failed (error 0x%x)", (unsigned)e);
    return e;
  }
  const EValue& out = m->method->get_output(0);
  if (!out.isTensor() || out.toTensor().scalar_type() != ScalarType::Float ||
      out.toTensor().numel() < n_rows * m->vocab) {
    std::snprintf(where, where_cap, "output 0 is not float logits with at least %" PRId64 " values",
                  n_rows * m->vocab);
    return Error::InvalidProgram;
  }
  Tensor t = out.toTensor();
  *logits = t.const_data_ptr<float>() + (t.numel() - n_rows * m->vocab);
  return Error::Ok;
}

// ----------------------------------------------------------------------------
// Link: the tty (or stdin/stdout), the frame reader and the transmit sequence counter.

struct Link {
  int in_fd;                         // frames from the host: the tty, or stdin
  int out_fd;                        // frames to the host: the same tty, or a copy of stdout
  const char* path;                  // for messages: the tty's path, or "stdin/stdout"
  uint32_t tx_seq;                   // next seq we send
  uint32_t rx_seq;                   // next seq we expect from the host
  int rx_started;                    // 0 until the first good frame
  uint8_t last_type;                 // the last good frame: type, body length and body CRC, to
  size_t last_len;                   //   drop a duplicate (the same frame again, same seq)
  uint32_t last_crc;
  FrameReader reader;
  uint8_t rx[4096];                  // bytes read from the host, fed to the reader from rx_off
  size_t rx_off, rx_len;
  uint8_t body[FRAME_MAX_BODY];      // outgoing body scratch
  uint8_t wire[FRAME_MAX_WIRE];      // outgoing frame scratch
};

Link* build_link(int in_fd, int out_fd, const char* path) {
  Link* l = (Link*)std::calloc(1, sizeof(Link));
  if (!l) return nullptr;
  l->in_fd = in_fd;
  l->out_fd = out_fd;
  l->path = path;
  frame_reader_init(&l->reader);
  return l;
}

void free_link(Link* l) {
  if (!l) return;
  serial_close(l->in_fd);
  if (l->out_fd != l->in_fd) serial_close(l->out_fd);
  std::free(l);
}

// `--serial -`: frames go out on a private copy of stdout, and fd 1 itself becomes a copy of
// stderr, so that whatever else writes to stdout (a library's printf) lands in the log
// instead of corrupting the frame stream. Returns the frame fd, or -1 with err set.
int take_stdout(char* err, size_t err_cap) {
  int out = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  if (out < 0) {
    std::snprintf(err, err_cap, "cannot use stdout as the link: %s", std::strerror(errno));
    return -1;
  }
  std::fflush(stdout);
  if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
    std::snprintf(err, err_cap, "cannot point stdout at stderr: %s", std::strerror(errno));
    close(out);
    return -1;
  }
  return out;
}

[[noreturn]] void link_lost(const Link* l, const char* what) {
  log_line("link lost: %s on %s; exiting with status %d", what, l->path, EXIT_LINK_LOST);
  std::exit(EXIT_LINK_LOST);
}

// The next frame reader event (a frame, or a framing error) from the host. With wait, blocks
// until there is one; without, reads only what has already arrived and returns FRAME_NONE when
// that holds no complete frame (the partial one stays in the reader). A closed or failed link
// ends the process.
int link_next_event(Link* l, bool wait, Frame* f) {
  for (;;) {
    while (l->rx_off < l->rx_len) {
      size_t used = 0;
      int event = frame_reader_feed(&l->reader, l->rx + l->rx_off, l->rx_len - l->rx_off, &used, f);
      l->rx_off += used;
      if (event != FRAME_NONE) return event;
    }
    if (!wait) {
      struct pollfd p = {l->in_fd, POLLIN, 0};
      int ready = poll(&p, 1, 0);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0 || (p.revents & (POLLIN | POLLHUP | POLLERR)) == 0) return FRAME_NONE;
    }
    ssize_t n = serial_read(l->in_fd, l->rx, sizeof l->rx);
    if (n == 0) link_lost(l, "end of file");
    if (n < 0) {
      char what[128];
      std::snprintf(what, sizeof what, "read: %s", std::strerror(errno));
      link_lost(l, what);
    }
    l->rx_off = 0;
    l->rx_len = (size_t)n;
  }
}

// Frames and writes one message; a write failure means the host is gone.
void link_send(Link* l, uint8_t type, long body_len) {
  if (body_len < 0) {  // a builder ran out of room: a bug, not a link problem
    log_line("internal error: message 0x%02x does not fit a frame", type);
    std::abort();
  }
  long n = frame_encode(type, l->tx_seq, l->body, (size_t)body_len, l->wire, sizeof l->wire);
  if (n < 0) {
    log_line("internal error: frame_encode(0x%02x) failed: %s", type, frame_result_name((int)n));
    std::abort();
  }
  if (serial_write_all(l->out_fd, l->wire, (size_t)n) != 0) {
    char what[128];
    std::snprintf(what, sizeof what, "write: %s", std::strerror(errno));
    link_lost(l, what);
  }
  l->tx_seq++;
}

__attribute__((format(printf, 3, 4))) void send_error(Link* l, uint16_t code, const char* fmt, ...) {
  char msg[PROTO_MAX_ERROR_MESSAGE + 1];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  log_line("ERROR %s: %s", proto_error_name(code), msg);
  link_send(l, MSG_ERROR, proto_pack_error(l->body, sizeof l->body, code, msg));
}

void send_hello(Link* l, const Model* m) {
  Hello h;
  h.proto = PROTO_VERSION;
  h.firmware = EDGELM_FIRMWARE_VERSION;
  h.board = EDGELM_BOARD;
  std::memcpy(h.model_sha256, m->sha256, sizeof h.model_sha256);
  h.max_seq_len = (uint32_t)m->max_seq_len;
  h.vocab_size = (uint32_t)m->vocab;
  h.threads = m->threads;
  h.load_ms = m->load_ms;
  link_send(l, MSG_HELLO, proto_pack_hello(l->body, sizeof l->body, &h));
}

// Sends TOKEN `index`. With `logits` (float[vocab], REQ_FLAG_REPORT_LOGITS) the frame also carries
// the token's logit and the TOKEN_MAX_TOP best (id, logit), best first, lower id first on a tie:
// the host measures how far the board's numbers are from its reference with them.
void send_token(Link* l, uint32_t index, uint32_t token, uint64_t t_us, const float* logits, int64_t vocab) {
  TokenMsg t;
  std::memset(&t, 0, sizeof t);
  t.index = index;
  t.token = token;
  t.t_us = t_us;
  if (logits != nullptr && vocab > 0 && vocab <= (int64_t)UINT32_MAX) {
    proto_fill_logits(&t, logits, (uint32_t)vocab, token);
#ifdef EDGELM_TEST_LIES
    lie_report(&t, logits, (uint32_t)vocab);
#endif
  }
#ifdef EDGELM_TEST_LIES
  if (g_lie.kind == LIE_STATS_FAST) t.t_us /= 10;
#endif
  link_send(l, MSG_TOKEN, proto_pack_token(l->body, sizeof l->body, &t));
}

// ----------------------------------------------------------------------------
// Generation

struct Server {
  Model* model;
  Link* link;
  Sampler sampler;
  int64_t draft_max = 0;      // most draft tokens per forward call (0: plain decoding)
  std::vector<uint32_t> ctx;  // [max_seq_len]: the prompt, then the generated tokens
  std::vector<uint32_t> chunk;  // [max_rows]: the token to feed and its draft
  bool context_drafts = true;   // draft from the context (prompt lookup)
  bool model_drafts = false;    // draft with the program's draft method where lookup finds nothing
  std::vector<uint32_t> dfed;   // [max_seq_len]: the tokens in the draft method's state, positions
  int64_t dend = 0;             //   0 .. dend - 1
  uint32_t dcalls = 0;          // forward calls of the draft method in this request
  bool quit = false;            // QUIT arrived (during a generation, or between requests)
  int64_t fed = 0;              // ctx[0 .. fed-1] is what the model's state holds after the last request
};

void send_framing_error(Link* l, int event);
bool accept_frame(Link* l, const Frame* f);

// Between tokens: whether the host has asked to stop this generation (CANCEL, or QUIT, which
// also ends the session). Anything else that arrives now is refused with an ERROR: the host
// waits for STATS before its next request.
bool stop_asked(Server* s) {
  Link* l = s->link;
  Frame f;
  for (int event; (event = link_next_event(l, false, &f)) != FRAME_NONE;) {
    if (event < 0) {
      send_framing_error(l, event);
      continue;
    }
    if (!accept_frame(l, &f)) continue;
    if (f.type == MSG_CANCEL || f.type == MSG_QUIT) {
      log_line("%s received during generation", f.type == MSG_CANCEL ? "CANCEL" : "QUIT");
      s->quit = s->quit || f.type == MSG_QUIT;
      return true;
    }
    send_error(l, ERR_BAD_REQUEST, "message type 0x%02x while generating: only CANCEL or QUIT until STATS", f.type);
  }
  return false;
}

// The largest of v logits, its index in *best, and its softmax probability.
float top_prob(const float* logits, int64_t v, uint32_t* best) {
  int64_t b = 0;
  for (int64_t i = 1; i < v; i++)
    if (logits[i] > logits[b]) b = i;
  double sum = 0;
  for (int64_t i = 0; i < v; i++) sum += std::exp((double)(logits[i] - logits[b]));
  *best = (uint32_t)b;
  return (float)(1.0 / sum);
}

// Drafts at most max_k tokens to follow ctx[0 .. n-1] with the program's draft method, greedily,
// stopping at the first token it is less than DRAFT_MIN_P sure of. First the draft's state is
// brought up to ctx: it holds dfed[0 .. dend-1], and from the first position that differs from
// ctx (a rejected draft, or tokens it has not seen) it is fed again, which rolls it back.
// Returns how many tokens, or -1 with where set.
int64_t draft_with_model(Server* s, int64_t n, int64_t max_k, uint32_t* out, char* where, size_t where_cap) {
  Fn* d = &s->model->draft;
  int64_t keep = 0;  // positions of the draft's state that hold ctx
  while (keep < s->dend && keep < n && s->dfed[(size_t)keep] == s->ctx[(size_t)keep]) keep++;
  if (keep == n) keep = n - 1;                          // feed the last token again, for its logits
  if (s->dend - keep > d->max_rows - 1) keep = 0;      // further back than it can rewind: start over
  const float* logits = nullptr;
  s->dcalls++;
  if (fn_forward(d, &s->ctx[(size_t)keep], n - keep, keep, false, &logits, where, where_cap) != Error::Ok)
    return -1;
  for (int64_t i = keep; i < n; i++) s->dfed[(size_t)i] = s->ctx[(size_t)i];
  s->dend = n;
  int64_t k = 0;
  while (k < max_k) {
    uint32_t best = 0;
    if (!(top_prob(logits, d->vocab, &best) >= DRAFT_MIN_P)) break;  // a NaN stops it too
    out[k++] = best;
    if (k == max_k) break;
    s->dcalls++;
    if (fn_forward(d, &out[k - 1], 1, n + k - 1, false, &logits, where, where_cap) != Error::Ok) return -1;
    s->dfed[(size_t)(n + k - 1)] = out[k - 1];
    s->dend = n + k;
  }
  return k;
}

// Serves one parsed REQUEST received at t_request (us). Sends TOKENs and STATS, or an ERROR.
void serve_request(Server* s, const Request* req, uint64_t t_request) {
  Model* m = s->model;
  Link* l = s->link;
  if ((uint64_t)req->n_prompt + req->max_new_tokens > (uint64_t)m->max_seq_len) {
    send_error(l, ERR_SEQ_TOO_LONG, "prompt %" PRIu32 " + max_new_tokens %" PRIu32
               " exceeds max_seq_len %" PRId64, req->n_prompt, req->max_new_tokens, m->max_seq_len);
    return;
  }
  // REQ_FLAG_KEEP_STATE: when the prompt starts with all the state holds (and goes on past it),
  // only the rest is fed. Anything less is fed whole: the state cannot rewind that far.
  int64_t kept = 0;
  if ((req->flags & REQ_FLAG_KEEP_STATE) && s->fed > 0 && s->fed < (int64_t)req->n_prompt && m->fwd.key_input) {
    kept = s->fed;
    for (int64_t i = 0; i < kept; i++)
      if (s->ctx[(size_t)i] != request_prompt_at(req, (uint32_t)i)) kept = 0;
  }
#ifdef EDGELM_TEST_LIES
  if (g_lie.kind == LIE_STALE && (req->flags & REQ_FLAG_KEEP_STATE) && m->fwd.key_input) {
    kept = 0;  // the longest common prefix, whatever the state holds after it
    while (kept < s->fed && kept < (int64_t)req->n_prompt - 1 &&
           s->ctx[(size_t)kept] == request_prompt_at(req, (uint32_t)kept))
      kept++;
  }
#endif
  s->fed = 0;  // from here on the state changes; set again when the request has been served
  for (uint32_t i = 0; i < req->n_prompt; i++) {
    uint32_t t = request_prompt_at(req, i);
    if ((int64_t)t >= m->vocab) {
      send_error(l, ERR_BAD_REQUEST, "prompt[%" PRIu32 "] = %" PRIu32 " is not below vocab_size %" PRId64,
                 i, t, m->vocab);
      return;
    }
    s->ctx[i] = t;
  }
  const bool use_stop = (req->flags & REQ_FLAG_IGNORE_STOP) == 0;
  log_line("request: %" PRIu32 " prompt tokens, max_new_tokens %" PRIu32 ", temperature %g, "
           "top_k %" PRIu32 ", top_p %g, %" PRIu32 " stop ids%s", req->n_prompt, req->max_new_tokens,
           (double)req->temperature, req->top_k, (double)req->top_p, req->n_stop,
           use_stop ? "" : " (ignored)");

  char where[160];
  const float* logits = nullptr;
  if (fn_forward(&m->fwd, s->ctx.data() + kept, req->n_prompt - kept, kept, false, &logits, where,
                 sizeof where) != Error::Ok) {
    send_error(l, ERR_RUNTIME, "prefill of %" PRId64 " tokens at input_pos %" PRId64 ": %s",
               (int64_t)req->n_prompt - kept, kept, where);
    return;
  }
  sampler_seed(&s->sampler, req->seed);
#ifdef EDGELM_TEST_LIES
  uint32_t tok = lie_sample(&s->sampler, &logits, req->temperature, req->top_k, req->top_p);
#else
  uint32_t tok = sample(&s->sampler, logits, req->temperature, req->top_k, req->top_p);
#endif
  uint64_t t_first = now_us();
  const bool report = (req->flags & REQ_FLAG_REPORT_LOGITS) != 0;
  send_token(l, 0, tok, t_first - t_request, report ? logits : nullptr, m->vocab);
  uint32_t generated = 1;
  uint64_t t_last = t_first;
  uint8_t stop = STOP_MAX_TOKENS;
  bool cancelled = false;  // CANCEL (or QUIT) arrived between two tokens of one call
  int64_t n_ctx = req->n_prompt;
  s->ctx[(size_t)n_ctx++] = tok;
  int64_t pos = req->n_prompt;  // tokens in the model's state: all of ctx but tok
  const bool speculate = s->draft_max > 0 && (req->flags & REQ_FLAG_NO_DRAFT) == 0;
  uint32_t calls = 0, draft_calls = 0, drafted = 0, accepted = 0, model_turns = 0;
  s->dend = 0;  // a new sequence for the draft method too
  s->dcalls = 0;
  // A draft that is wrong from its first token costs a call that is wider for nothing (on lfm2-350m
  // about 1.25x a one-token step): after `misses` such calls in a row, skip drafting for as many
  // calls (at most 8), so text that does not repeat its context costs little.
  uint32_t misses = 0, skip = 0;

  for (;;) {
    if (use_stop && request_is_stop(req, tok)) {
      stop = STOP_TOKEN;
      break;
    }
    if (generated >= req->max_new_tokens) break;
    if (cancelled || stop_asked(s)) {  // the host's CANCEL is read between tokens
      stop = STOP_CANCELLED;
      break;
    }
    // Draft k tokens to follow tok, no more than the request and the program have room for.
    // The context's own repeats first (free), then the draft method; lookup backs off after misses.
    int64_t k = 0;
    bool looked_up = false;
    int64_t room = speculate ? s->draft_max : 0;
    if (room > (int64_t)(req->max_new_tokens - generated) - 1) room = (int64_t)(req->max_new_tokens - generated) - 1;
    if (room > m->max_seq_len - pos - 1) room = m->max_seq_len - pos - 1;
    if (room > 0 && skip > 0) {
      skip--;
    } else if (room > 0 && s->context_drafts) {
      k = (int64_t)draft_lookup(s->ctx.data(), (size_t)n_ctx, (size_t)room, &s->chunk[1]);
      looked_up = k > 0;
    }
    if (room > 0 && k == 0 && s->model_drafts) {
      k = draft_with_model(s, n_ctx, room, &s->chunk[1], where, sizeof where);
      if (k < 0) {
        send_error(l, ERR_RUNTIME, "draft model at input_pos %" PRId64 ": %s", pos, where);
        return;
      }
      model_turns++;
    }
    s->chunk[0] = tok;
    if (fn_forward(&m->fwd, s->chunk.data(), k + 1, pos, k > 0, &logits, where, sizeof where) != Error::Ok) {
      send_error(l, ERR_RUNTIME, "decode step %" PRIu32 " at input_pos %" PRId64 " (%" PRId64
                 " draft tokens): %s", generated, pos, k, where);
      return;
    }
    calls++;
    draft_calls += k > 0 ? 1 : 0;
    drafted += (uint32_t)k;
    // Row r holds the logits after chunk[r]: pick from it as plain decoding would; while the
    // pick is the next draft token, the next row is valid too.
    int64_t used = 0;
    const uint32_t accepted_before = accepted;
    for (;;) {
      const float* row = logits + used * m->vocab;
#ifdef EDGELM_TEST_LIES
      tok = lie_sample(&s->sampler, &row, req->temperature, req->top_k, req->top_p);
#else
      tok = sample(&s->sampler, row, req->temperature, req->top_k, req->top_p);
#endif
#ifdef EDGELM_TEST_DRAFT_BUG  // tests only: the draft is taken on trust, the model's pick ignored
      if (used < k) tok = s->chunk[(size_t)used + 1];
#endif
      t_last = now_us();
      send_token(l, generated, tok, t_last - t_request, report ? row : nullptr, m->vocab);
      generated++;
      s->ctx[(size_t)n_ctx++] = tok;
      used++;
      if (used > k || tok != s->chunk[(size_t)used]) break;  // the last row, or the draft is wrong here
      accepted++;
      if ((use_stop && request_is_stop(req, tok)) || generated >= req->max_new_tokens) break;
      if (stop_asked(s)) {  // between the tokens of one call, too: a long draft is not waited out
        cancelled = true;
        break;
      }
    }
    pos += used;  // the next call starts here: rejected draft tokens are rolled back
    if (looked_up && accepted == accepted_before) {
      misses++;
      skip = misses < 8 ? misses : 8;
    } else if (looked_up) {
      misses = 0;
    }
  }

  Stats st;
  st.prompt_tokens = req->n_prompt;
  st.generated = generated;
  st.stop = stop;
  st.load_ms = m->load_ms;
  proto_fill_rates(&st, (uint32_t)(req->n_prompt - kept), generated, t_request, t_first, t_last);
  st.peak_rss_kb = peak_rss_kb();
  st.decode_calls = calls;
  st.draft_calls = draft_calls;
  st.drafted = drafted;
  st.accepted = accepted;
  st.draft_model_calls = s->dcalls;
  st.kept = (uint32_t)kept;
#ifdef EDGELM_TEST_LIES
  if (g_lie.kind == LIE_STATS_NAN) st.ttft_ms = st.decode_tok_s = NAN;
  if (g_lie.kind == LIE_STATS_FAST)  // as fast as its TOKEN times (t_us / 10) claim
    proto_fill_rates(&st, (uint32_t)(req->n_prompt - kept), generated, t_request,
                     t_request + (t_first - t_request) / 10, t_request + (t_last - t_request) / 10);
  if (g_lie.kind == LIE_STATS_COUNTS) st.decode_calls++;
#endif
  s->fed = pos;
  link_send(l, MSG_STATS, proto_pack_stats(l->body, sizeof l->body, &st));
  log_line("done: %" PRIu32 " tokens (%s), ttft %.2f ms, prefill %.1f tok/s, decode %.1f tok/s, "
           "%" PRIu32 " decode calls, %" PRIu32 " of %" PRIu32 " draft tokens accepted (%" PRIu32
           " turns of the draft model, %" PRIu32 " calls), peak rss %" PRIu64 " kB",
           generated, stop == STOP_TOKEN ? "stop token" : stop == STOP_CANCELLED ? "cancelled" : "max_new_tokens",
           (double)st.ttft_ms,
           (double)st.prefill_tok_s, (double)st.decode_tok_s, calls, accepted, drafted, model_turns,
           s->dcalls, st.peak_rss_kb);
}

void send_framing_error(Link* l, int event) {
  uint16_t code = proto_error_for_frame(event);
  const char* what = code == ERR_BAD_CRC    ? "frame CRC mismatch"
                     : code == ERR_TOO_LONG ? "frame over 16384 payload bytes, discarded up to the next 0x00"
                                            : "frame is not valid COBS or is shorter than 9 bytes";
  send_error(l, code, "%s", what);
}

// Sequence bookkeeping for a well-formed frame. Returns false for a duplicate of the last frame
// (a link that repeats bytes must not make us serve a request twice), which is dropped.
bool accept_frame(Link* l, const Frame* f) {
  uint32_t crc = crc32_update(0, f->body, f->body_len);
  if (l->rx_started && f->seq + 1 == l->rx_seq && f->type == l->last_type && f->body_len == l->last_len &&
      crc == l->last_crc) {
    // A link that repeats bytes must not make us serve a request twice. A new host session
    // starts its sequence numbers at a random value, so it does not repeat the last frame.
    log_line("duplicate of frame %" PRIu32 " dropped", f->seq);
    return false;
  }
  if (l->rx_started && f->seq != l->rx_seq)
    log_line("host seq jumped from %" PRIu32 " to %" PRIu32 " (frames lost)", l->rx_seq, f->seq);
  l->rx_started = 1;
  l->rx_seq = f->seq + 1;
  l->last_type = f->type;
  l->last_len = f->body_len;
  l->last_crc = crc;
  return true;
}

// Handles one frame reader event. Returns true when the host asked to quit.
bool handle_event(Server* s, int event, const Frame* f) {
  Link* l = s->link;
  if (event < 0) {
    send_framing_error(l, event);
    return false;
  }
  uint64_t t_request = now_us();
  if (!accept_frame(l, f)) return false;

  if (f->type == MSG_QUIT) {
    if (f->body_len != 0) {
      send_error(l, ERR_BAD_REQUEST, "QUIT carries %zu body bytes, expected none", f->body_len);
      return false;
    }
    log_line("QUIT received");
    return true;
  }
  if (f->type == MSG_CANCEL) {  // late: the generation it was for has ended
    log_line("CANCEL received with no generation under way; ignored");
    return false;
  }
  if (f->type != MSG_REQUEST) {
    send_error(l, ERR_BAD_REQUEST, "unknown message type 0x%02x", f->type);
    return false;
  }
  Request req;
  const char* why = nullptr;
  if (proto_parse_request(f->body, f->body_len, &req, &why) != 0) {
    send_error(l, ERR_BAD_REQUEST, "REQUEST body (%zu bytes) does not parse: %s", f->body_len, why);
    return false;
  }
  serve_request(s, &req, t_request);
  return s->quit;
}

}  // namespace

// ----------------------------------------------------------------------------
// main

// SIGTERM, SIGHUP, SIGINT: the tty's exclusive hold is released, then the process dies of the
// signal as it would have (exit status 128 + signal to a shell).
volatile sig_atomic_t g_tty_fd = -1;

extern "C" void on_terminate(int sig) {
  serial_release((int)g_tty_fd);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

int main(int argc, char** argv) {
  Options opt;
  int status = parse_options(argc, argv, &opt);
  if (status >= 0) return status;
  g_verbose = opt.verbose;
#ifdef EDGELM_TEST_LIES
  {
    char why[256];
    const char* lie = std::getenv("EDGELM_TEST_LIE");
    if (lie_init(lie, why, sizeof why) != 0) {
      log_line("%s", why);
      return EXIT_USAGE;
    }
    log_line("TEST BUILD (EDGELM_TEST_LIES): %s%s", lie && *lie ? "lying: " : "honest, no EDGELM_TEST_LIE",
             lie && *lie ? lie : "");
  }
#endif
  std::signal(SIGPIPE, SIG_IGN);  // a vanished peer shows up as a write error instead
  const bool stdio = std::strcmp(opt.serial, SERIAL_STDIO) == 0;
  const char* link_name = stdio ? "stdin/stdout" : opt.serial;

  char err[512];
  int stdio_out = -1;
  if (stdio) {  // first: nothing (ExecuTorch, XNNPACK, cpuinfo) may write to stdout from here on
    stdio_out = take_stdout(err, sizeof err);
    if (stdio_out < 0) {
      log_line("%s", err);
      return EXIT_SERIAL;
    }
  }

  // Before runtime_init(), so nothing is logged through the default PAL.
  executorch::runtime::register_pal(executorch::runtime::PalImpl::create(pal_log, __FILE__));
  executorch::runtime::runtime_init();

  Model model;
  g_pal_hold = true;
  int loaded = build_model(&model, opt.model, opt.threads, err, sizeof err);
  g_pal_hold = false;
  if (loaded != 0) {
    if (g_pal_held[0]) log_line("%s: %s", err, g_pal_held);
    else log_line("%s", err);
    return EXIT_MODEL;
  }
  if (g_pal_held[0]) log_line("[executorch] %s", g_pal_held);
  char hex[SHA256_HEX_LEN + 1];
  sha256_hex(model.sha256, hex);
  log_line("loaded %s (sha256 %s): max_seq_len %" PRId64 ", vocab %" PRId64 ", %u threads, %.1f ms, "
           "verifies drafts of up to %" PRId64 " tokens%s",
           opt.model, hex, model.max_seq_len, model.vocab, model.threads, (double)model.load_ms,
           model.max_rows - 1, model.has_draft ? ", drafts with its draft method" : "");

  Server server;
  server.model = &model;
  server.ctx.assign((size_t)model.max_seq_len, 0);
  server.chunk.assign((size_t)model.max_rows, 0);
  server.draft_max = model.max_rows - 1;
  if (opt.draft >= 0 && opt.draft < server.draft_max) server.draft_max = opt.draft;
  server.context_drafts = opt.draft_context;
  server.model_drafts = model.has_draft && opt.draft_model && server.draft_max > 0;
  server.dfed.assign((size_t)model.max_seq_len, 0);
  if (build_sampler(&server.sampler, (uint32_t)model.vocab) != 0) {
    log_line("out of memory for the sampler (vocab %" PRId64 ")", model.vocab);
    free_model(&model);
    return EXIT_MODEL;
  }

  int in_fd = STDIN_FILENO;
  int out_fd = stdio_out;
  if (!stdio) {
    in_fd = out_fd = serial_open(opt.serial, opt.baud, err, sizeof err);
    if (in_fd < 0) {
      log_line("%s", err);
      free_sampler(&server.sampler);
      free_model(&model);
      return EXIT_SERIAL;
    }
    g_tty_fd = in_fd;
    for (int sig : {SIGTERM, SIGHUP, SIGINT}) std::signal(sig, on_terminate);
  }
  Link* link = build_link(in_fd, out_fd, link_name);
  if (!link) {
    log_line("out of memory for the link buffers");
    serial_close(in_fd);
    if (out_fd != in_fd) serial_close(out_fd);
    free_sampler(&server.sampler);
    free_model(&model);
    return EXIT_SERIAL;
  }
  server.link = link;
  send_hello(link, &model);
  if (stdio) {
    log_line("HELLO sent on stdin/stdout (board %s, firmware %s); waiting for requests", EDGELM_BOARD,
             EDGELM_FIRMWARE_VERSION);
  } else {
    log_line("HELLO sent on %s at %ld baud (board %s, firmware %s); waiting for requests", opt.serial,
             opt.baud, EDGELM_BOARD, EDGELM_FIRMWARE_VERSION);
  }

  bool quit = false;
  while (!quit) {
    Frame f;
    int event = link_next_event(link, true, &f);
    quit = handle_event(&server, event, &f);
  }

  free_link(link);
  free_sampler(&server.sampler);
  free_model(&model);
  return EXIT_OK;
}
