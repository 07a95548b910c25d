// JNI bridge from dev.glassexport.core.ExecuTorchBackend to ExecuTorch's runtime: loads model.pte,
// runs its `prefill` and `decode` methods over one set of shared memory arenas (the KV cache is a
// mutable buffer shared by both methods: exported with share_mutable_buffers=True), and returns the
// logits and kept indices. The glass kernels, XNNPACK and ExecuTorch's CPU kernels register
// themselves when their libraries load (linked in by CMakeLists.txt). Errors become
// IllegalStateException with ExecuTorch's error name; nothing here aborts the process.
#include <dlfcn.h>
#include <jni.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/runtime.h>

// libexecutorch_threadpool's pool (shared by XNNPACK and the glass kernels); its header is not in the
// wheel, these two members are its exported ABI.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::FileDataLoader;
using executorch::extension::MallocMemoryAllocator;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::HierarchicalAllocator;
using executorch::runtime::MemoryManager;
using executorch::runtime::Method;
using executorch::runtime::Program;
using executorch::runtime::Span;

struct Failure {
  std::string message;
};

void check(Error error, const std::string& what) {
  if (error != Error::Ok) {
    throw Failure{what + ": " + executorch::runtime::to_string(error) + " (ExecuTorch error " +
                  std::to_string(static_cast<int>(error)) + ")"};
  }
}

template <typename T>
T take(executorch::runtime::Result<T>&& result, const std::string& what) {
  check(result.error(), what);
  return std::move(result.get());
}

// One program and its two methods. Planned buffer i of both methods is one allocation, sized to the
// larger of the two: the shared mutable buffers (the KV cache) live there, so decode sees prefill's.
struct Engine {
  std::unique_ptr<FileDataLoader> loader;
  std::unique_ptr<Program> program;
  std::vector<std::vector<uint8_t>> arenas;
  std::vector<Span<uint8_t>> spans;
  std::unique_ptr<HierarchicalAllocator> planned;
  MallocMemoryAllocator method_allocator[2];
  MallocMemoryAllocator temp_allocator;
  std::unique_ptr<MemoryManager> memory[2];
  std::unique_ptr<Method> prefill, decode;
  int64_t vocab = 0;
};

std::unique_ptr<Method> load(Engine& e, int which, const char* name) {
  e.memory[which] = std::make_unique<MemoryManager>(&e.method_allocator[which], e.planned.get(), &e.temp_allocator);
  return std::make_unique<Method>(take(e.program->load_method(name, e.memory[which].get()), std::string("load_method ") + name));
}

std::unique_ptr<Engine> open(const char* path) {
  executorch::runtime::runtime_init();
  auto e = std::make_unique<Engine>();
  e->loader = std::make_unique<FileDataLoader>(take(FileDataLoader::from(path), std::string("open ") + path));
  e->program = std::make_unique<Program>(take(Program::load(e->loader.get()), "load the program"));
  size_t buffers = 0;
  std::vector<size_t> sizes;
  for (const char* name : {"prefill", "decode"}) {
    auto meta = take(e->program->method_meta(name), std::string("method ") + name);
    buffers = meta.num_memory_planned_buffers();
    sizes.resize(std::max(sizes.size(), buffers), 0);
    for (size_t i = 0; i < buffers; i++) {
      sizes[i] = std::max(sizes[i], static_cast<size_t>(take(meta.memory_planned_buffer_size(i), "buffer size")));
    }
  }
  for (size_t size : sizes) e->arenas.emplace_back(size);
  for (auto& arena : e->arenas) e->spans.emplace_back(arena.data(), arena.size());
  e->planned = std::make_unique<HierarchicalAllocator>(Span<Span<uint8_t>>(e->spans.data(), e->spans.size()));
  e->prefill = load(*e, 0, "prefill");
  e->decode = load(*e, 1, "decode");
  return e;
}

void set_long_input(Method& method, size_t index, int64_t* data, std::vector<TensorImpl::SizesType> sizes) {
  std::vector<TensorImpl::DimOrderType> order(sizes.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = static_cast<TensorImpl::DimOrderType>(i);
  std::vector<TensorImpl::StridesType> strides(sizes.size(), 1);
  for (int i = static_cast<int>(sizes.size()) - 2; i >= 0; i--) strides[i] = strides[i + 1] * sizes[i + 1];
  TensorImpl impl(ScalarType::Long, sizes.size(), sizes.data(), data, order.data(), strides.data());
  check(method.set_input(EValue(Tensor(&impl)), index), "set input " + std::to_string(index));  // copied in
}

const Tensor& output(Method& method, size_t index, ScalarType type, const char* what) {
  const EValue& value = method.get_output(index);
  if (!value.isTensor() || value.toTensor().scalar_type() != type) throw Failure{std::string(what) + " is not a tensor of the expected type"};
  return value.toTensor();
}

void throw_java(JNIEnv* env, const std::string& message) {
  jclass cls = env->FindClass("java/lang/IllegalStateException");
  if (cls != nullptr) env->ThrowNew(cls, message.c_str());
}

Engine* engine(JNIEnv* env, jlong handle) {
  if (handle == 0) {
    throw_java(env, "the program is closed");
    return nullptr;
  }
  return reinterpret_cast<Engine*>(handle);
}

// Runs f, turning a Failure into an IllegalStateException.
template <typename F>
auto guarded(JNIEnv* env, F f, decltype(f()) fallback) -> decltype(f()) {
  try {
    return f();
  } catch (const Failure& failure) {
    throw_java(env, failure.message);
  } catch (const std::exception& ex) {
    throw_java(env, std::string("native error: ") + ex.what());
  }
  return fallback;
}

std::string string_of(JNIEnv* env, jstring s) {
  const char* chars = env->GetStringUTFChars(s, nullptr);
  std::string out(chars);
  env->ReleaseStringUTFChars(s, chars);
  return out;
}

}  // namespace

#define JNI_FN(type, name) JNIEXPORT type JNICALL Java_dev_glassexport_core_ExecuTorchBackend_##name

extern "C" {

JNI_FN(void, nativePreload)(JNIEnv* env, jclass, jstring library) {
  std::string path = string_of(env, library);
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) throw_java(env, dlerror());
}

JNI_FN(jboolean, nativeHasOperator)(JNIEnv* env, jclass, jstring op) {
  executorch::runtime::runtime_init();
  return executorch::runtime::registry_has_op_function(string_of(env, op).c_str()) ? JNI_TRUE : JNI_FALSE;
}

JNI_FN(jint, nativeThreads)(JNIEnv*, jclass) {
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool == nullptr ? 1 : static_cast<jint>(pool->get_thread_count());
}

JNI_FN(jlong, nativeOpen)(JNIEnv* env, jclass, jstring program, jint threads) {
  std::string path = string_of(env, program);
  return guarded(env, [&]() -> jlong {
    if (threads > 0) {
      auto* pool = executorch::extension::threadpool::get_threadpool();
      if (pool != nullptr) pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads));
    }
    auto e = open(path.c_str());
    return reinterpret_cast<jlong>(e.release());
  }, jlong{0});
}

JNI_FN(jlong, nativeVocabSize)(JNIEnv* env, jclass, jlong handle) {
  Engine* e = engine(env, handle);
  if (e == nullptr) return 0;
  return guarded(env, [&]() -> jlong {
    if (e->vocab == 0) {
      auto meta = take(e->program->method_meta("decode"), "method decode");
      auto logits = take(meta.output_tensor_meta(0), "decode output 0");
      auto sizes = logits.sizes();
      e->vocab = sizes[sizes.size() - 1];
    }
    return e->vocab;
  }, jlong{0});
}

JNI_FN(void, nativePrefill)(JNIEnv* env, jclass, jlong handle, jlongArray ids, jfloatArray last_logits, jlongArray indices) {
  Engine* e = engine(env, handle);
  if (e == nullptr) return;
  guarded(env, [&]() -> int {
    jsize count = env->GetArrayLength(ids);
    std::vector<int64_t> tokens(count);
    env->GetLongArrayRegion(ids, 0, count, reinterpret_cast<jlong*>(tokens.data()));
    set_long_input(*e->prefill, 0, tokens.data(), {1, static_cast<TensorImpl::SizesType>(count)});
    check(e->prefill->execute(), "execute prefill");
    const Tensor& logits = output(*e->prefill, 0, ScalarType::Float, "prefill logits");
    const Tensor& kept = output(*e->prefill, 2, ScalarType::Long, "prefill glass_indices");
    jsize vocab = env->GetArrayLength(last_logits);
    if (logits.numel() != static_cast<ssize_t>(count) * vocab) throw Failure{"prefill logits have " + std::to_string(logits.numel()) + " values, expected T x vocab"};
    if (kept.numel() != env->GetArrayLength(indices)) throw Failure{"prefill returned " + std::to_string(kept.numel()) + " indices, expected layers x k"};
    env->SetFloatArrayRegion(last_logits, 0, vocab, logits.const_data_ptr<float>() + static_cast<size_t>(count - 1) * vocab);
    env->SetLongArrayRegion(indices, 0, env->GetArrayLength(indices), reinterpret_cast<const jlong*>(kept.const_data_ptr<int64_t>()));
    return 0;
  }, 0);
}

JNI_FN(void, nativeDecode)(JNIEnv* env, jclass, jlong handle, jlong token, jlong position, jlongArray indices, jfloatArray logits_out) {
  Engine* e = engine(env, handle);
  if (e == nullptr) return;
  guarded(env, [&]() -> int {
    auto meta = take(e->program->method_meta("decode"), "method decode");
    auto kept_meta = take(meta.input_tensor_meta(2), "decode input 2");
    std::vector<TensorImpl::SizesType> kept_sizes(kept_meta.sizes().begin(), kept_meta.sizes().end());
    jsize n = env->GetArrayLength(indices);
    std::vector<int64_t> kept(n);
    env->GetLongArrayRegion(indices, 0, n, reinterpret_cast<jlong*>(kept.data()));
    int64_t id = token, pos = position;
    set_long_input(*e->decode, 0, &id, {1, 1});
    set_long_input(*e->decode, 1, &pos, {1, 1});
    set_long_input(*e->decode, 2, kept.data(), kept_sizes);
    check(e->decode->execute(), "execute decode");
    const Tensor& logits = output(*e->decode, 0, ScalarType::Float, "decode logits");
    if (logits.numel() != env->GetArrayLength(logits_out)) throw Failure{"decode logits have " + std::to_string(logits.numel()) + " values, expected vocab"};
    env->SetFloatArrayRegion(logits_out, 0, env->GetArrayLength(logits_out), logits.const_data_ptr<float>());
    return 0;
  }, 0);
}

JNI_FN(void, nativeClose)(JNIEnv*, jclass, jlong handle) {
  delete reinterpret_cast<Engine*>(handle);
}

}  // extern "C"
