package dev.glassexport.core;

import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;

/**
 * ExecuTorch backend over model.pte's `prefill` and `decode` methods, through our own JNI bridge
 * (android_demo/jni: libglass_et_jni.so, ExecuTorch's runtime linked with the glass kernels). The KV
 * cache lives inside the program: prefill writes it, decode reads it and appends one position.
 *
 * <p>Where the bridge comes from: the system property {@code glass.et.jni} (a path, host tests), else
 * {@code libglass_et_jni.so} in the given native library directory, else {@code System.loadLibrary}
 * (the app's jniLibs). {@code glass.et.preload} (paths joined by {@code File.pathSeparator}) names
 * libraries opened first, globally: on the host, where ExecuTorch's LLM kernels (llama::custom_sdpa,
 * llama::update_cache) ship only inside the wheel's PyTorch-bound library; see android_demo/README.md.
 */
public final class ExecuTorchBackend implements Backend {
  public static final String LIBRARY = "glass_et_jni";
  private static boolean loaded;

  private final Manifest manifest;
  private final String opImplementation;
  private long handle;

  public ExecuTorchBackend(Manifest manifest, Path nativeLibraryDir, int threads) {
    if (!"executorch".equals(manifest.target)) {
      throw new GlassException("artifact target is " + manifest.target + ", not executorch", "pick a .pte artifact");
    }
    this.manifest = manifest;
    loadBridge(nativeLibraryDir);
    try {
      this.handle = nativeOpen(manifest.file("program").toString(), threads);
    } catch (IllegalStateException e) {
      String fix = e.getMessage().contains("OperatorMissing")
          ? "link the glass kernels and ExecuTorch's LLM custom ops into " + System.mapLibraryName(LIBRARY)
              + " (android_demo/README.md)"
          : "re-export the artifact";
      throw new GlassException("ExecuTorch cannot load " + manifest.file("program") + ": " + e.getMessage(), fix, e);
    }
    // ExecuTorch has no fallback: a program that loaded runs the glass ops it calls on the native kernels.
    java.util.List<String> glass = new java.util.ArrayList<>();
    for (String op : manifest.customOps) {
      if (op.startsWith("glass::") && op.contains("gather_ffn")) glass.add(op);  // the decode FFN
    }
    this.opImplementation = glass.isEmpty() ? "stock kernels (no glass op in the program)"
        : "native glass kernels (" + String.join(", ", glass) + ")";
  }

  /** Loads libglass_et_jni once per process, with a clear message when it is missing or built for another ABI. */
  static synchronized void loadBridge(Path nativeLibraryDir) {
    if (loaded) return;
    String explicit = System.getProperty("glass.et.jni");
    Path inDir = nativeLibraryDir == null ? null : nativeLibraryDir.resolve(System.mapLibraryName(LIBRARY));
    try {
      if (explicit != null && !explicit.isEmpty()) {
        Path library = Path.of(explicit);
        if (!Files.isRegularFile(library)) {
          throw new GlassException(library + " does not exist", "build it: bash android_demo/jni/build.sh");
        }
        NativeAbi.check(library);
        System.load(library.toAbsolutePath().toString());
      } else if (inDir != null && Files.isRegularFile(inDir)) {
        NativeAbi.check(inDir);
        System.load(inDir.toAbsolutePath().toString());
      } else {
        System.loadLibrary(LIBRARY);
      }
    } catch (UnsatisfiedLinkError e) {
      throw new GlassException(
          "the ExecuTorch bridge " + System.mapLibraryName(LIBRARY) + " cannot be loaded: " + e.getMessage(),
          "build android_demo/jni for " + NativeAbi.ofThisProcess() + " (android_demo/README.md), or export --target onnx", e);
    }
    String preload = System.getProperty("glass.et.preload", "");
    for (String library : preload.split(File.pathSeparator)) {
      if (library.isEmpty()) continue;
      try {
        nativePreload(library);
      } catch (IllegalStateException e) {
        throw new GlassException("cannot open " + library + ": " + e.getMessage(), "rebuild android_demo/jni (build.sh)", e);
      }
    }
    loaded = true;
  }

  /** Whether ExecuTorch's kernel registry in this process has `op` (e.g. "glass::norm_gather_ffn_q.out"). */
  public static boolean hasOperator(String op) {
    return nativeHasOperator(op);
  }

  @Override
  public Prefill prefill(long[] ids) {
    float[] logits = new float[vocabOf()];
    long[] flat = new long[manifest.numLayers * manifest.k];
    try {
      nativePrefill(live(), ids, logits, flat);
    } catch (IllegalStateException e) {
      throw new GlassException("prefill failed: " + e.getMessage(), null, e);
    }
    long[][] indices = new long[manifest.numLayers][];
    for (int layer = 0; layer < indices.length; layer++) {
      indices[layer] = java.util.Arrays.copyOfRange(flat, layer * manifest.k, (layer + 1) * manifest.k);
    }
    return new Prefill(logits, indices);
  }

  @Override
  public float[] decode(long token, long position, long[][] indices) {
    long[] flat = new long[indices.length * manifest.k];
    for (int layer = 0; layer < indices.length; layer++) System.arraycopy(indices[layer], 0, flat, layer * manifest.k, manifest.k);
    float[] logits = new float[vocabOf()];
    try {
      nativeDecode(live(), token, position, flat, logits);
    } catch (IllegalStateException e) {
      throw new GlassException("decode failed: " + e.getMessage(), null, e);
    }
    return logits;
  }

  private int vocabOf() {
    return (int) nativeVocabSize(live());
  }

  private long live() {
    if (handle == 0) throw new GlassException("the ExecuTorch program is closed", "open the artifact again");
    return handle;
  }

  @Override
  public String runtime() {
    return "executorch (JNI bridge, " + nativeThreads() + " threads)";
  }

  @Override
  public String opImplementation() {
    return opImplementation;
  }

  @Override
  public synchronized void close() {
    if (handle != 0) {
      nativeClose(handle);
      handle = 0;
    }
  }

  // android_demo/jni/glass_et_jni.cpp. Errors arrive as IllegalStateException with ExecuTorch's error name.
  private static native void nativePreload(String library);

  private static native boolean nativeHasOperator(String op);

  private static native int nativeThreads();

  private static native long nativeOpen(String program, int threads);

  private static native long nativeVocabSize(long handle);

  private static native void nativePrefill(long handle, long[] ids, float[] lastLogits, long[] indices);

  private static native void nativeDecode(long handle, long token, long position, long[] indices, float[] logits);

  private static native void nativeClose(long handle);
}
