package dev.glassexport.core;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * ONNX Runtime backend over prefill.onnx and decode.onnx. The same class runs on the host (the
 * onnxruntime JVM jar) and on Android (the onnxruntime-android AAR): both expose ai.onnxruntime.
 * Registers the glass native op library when one is given and present; otherwise the graph's
 * GatherFFN function fallback runs.
 */
public final class OrtBackend implements Backend {
  private final OrtEnvironment env = OrtEnvironment.getEnvironment();
  private final Manifest manifest;
  private final OrtSession prefill;
  private final OrtSession decode;
  private final String opImplementation;
  private List<OnnxTensor> cache = new ArrayList<>();

  /** nativeLibraryDir: where libglass_ort_ops.so may live (e.g. the app's nativeLibraryDir), or null. */
  public OrtBackend(Manifest manifest, Path nativeLibraryDir, int threads) {
    if (!"onnx".equals(manifest.target)) {
      throw new GlassException("artifact target is " + manifest.target + ", not onnx", "pick an ONNX artifact");
    }
    this.manifest = manifest;
    try {
      OrtSession.SessionOptions options = new OrtSession.SessionOptions();
      if (threads > 0) options.setIntraOpNumThreads(threads);
      String implementation = "ONNX function fallback";
      if (nativeLibraryDir != null && manifest.nativeLibrary != null) {
        Path library = nativeLibraryDir.resolve(manifest.nativeLibrary);
        if (Files.isRegularFile(library)) {
          NativeAbi.check(library);
          try {
            options.registerCustomOpLibrary(library.toString());
            implementation = "native (" + library.getFileName() + ")";
          } catch (OrtException e) {
            throw new GlassException(
                "cannot load " + library + ": " + e.getMessage(),
                "build the op library for this device's ABI (runtime_ops/README.md), or remove it to use the fallback", e);
          }
        }
      }
      this.opImplementation = implementation;
      this.prefill = env.createSession(manifest.file("prefill").toString(), options);
      this.decode = env.createSession(manifest.file("decode").toString(), options);
      this.cache = allocateCache(env, manifest);
    } catch (OrtException e) {
      throw new GlassException("onnxruntime cannot load " + manifest.directory + ": " + e.getMessage(), "re-export the artifact", e);
    }
  }

  @Override
  public String opImplementation() {
    return opImplementation;
  }

  @Override
  public String runtime() {
    return "onnxruntime " + env.getVersion();
  }

  @Override
  public Prefill prefill(long[] ids) {
    Map<String, OnnxTensor> feeds = new HashMap<>(cacheFeeds());
    try (OnnxTensor input = OnnxTensor.createTensor(env, new long[][] {ids})) {
      feeds.put("input_ids", input);
      try (OrtSession.Result out = prefill.run(feeds, Set.of("logits", "glass_indices"), cacheOutputs())) {
        float[][][] logits = (float[][][]) out.get("logits").get().getValue();
        long[][] indices = (long[][]) out.get("glass_indices").get().getValue();
        return new Prefill(logits[0][logits[0].length - 1], indices);
      }
    } catch (OrtException e) {
      throw new GlassException("prefill failed: " + e.getMessage(), null, e);
    }
  }

  @Override
  public float[] decode(long token, long position, long[][] indices) {
    Map<String, OnnxTensor> feeds = new HashMap<>(cacheFeeds());
    try (OnnxTensor ids = OnnxTensor.createTensor(env, new long[][] {{token}});
        OnnxTensor pos = OnnxTensor.createTensor(env, new long[][] {{position}});
        OnnxTensor idx = OnnxTensor.createTensor(env, indices)) {
      feeds.put("input_ids", ids);
      feeds.put("position_ids", pos);
      feeds.put("glass_indices", idx);
      try (OrtSession.Result out = decode.run(feeds, Set.of("logits"), cacheOutputs())) {
        float[][][] logits = (float[][][]) out.get("logits").get().getValue();
        return logits[0][0];
      }
    } catch (OrtException e) {
      throw new GlassException("decode failed: " + e.getMessage(), null, e);
    }
  }

  /**
   * The KV cache: one buffer [1, kv_heads, max_seq_len, head_dim] per layer and kind, fed as the past input
   * and pinned as the present output, so GroupQueryAttention writes the new positions in place (no copy).
   */
  private Map<String, OnnxTensor> cacheFeeds() {
    Map<String, OnnxTensor> feeds = new HashMap<>();
    for (int i = 0; i < manifest.pastNames.size(); i++) feeds.put(manifest.pastNames.get(i), cache.get(i));
    return feeds;
  }

  private Map<String, OnnxTensor> cacheOutputs() {
    Map<String, OnnxTensor> outputs = new HashMap<>();
    for (int i = 0; i < manifest.presentNames.size(); i++) outputs.put(manifest.presentNames.get(i), cache.get(i));
    return outputs;
  }

  /** One tensor per layer and kind over a direct buffer [1, kv_heads, max_seq_len, head_dim] (zeros), read in place. */
  static List<OnnxTensor> allocateCache(OrtEnvironment env, Manifest manifest) throws OrtException {
    long[] shape = {1, manifest.numKvHeads, manifest.maxSeqLen, manifest.headDim};
    int size = manifest.numKvHeads * manifest.maxSeqLen * manifest.headDim;
    List<OnnxTensor> cache = new ArrayList<>();
    for (int i = 0; i < manifest.pastNames.size(); i++) {
      FloatBuffer buffer = ByteBuffer.allocateDirect(size * Float.BYTES).order(ByteOrder.nativeOrder()).asFloatBuffer();
      cache.add(OnnxTensor.createTensor(env, buffer, shape));
    }
    return cache;
  }

  private void closeCache() {
    for (OnnxTensor t : cache) t.close();
    cache = new ArrayList<>();
  }

  @Override
  public void close() {
    closeCache();
    try {
      prefill.close();
      decode.close();
    } catch (OrtException e) {
      throw new GlassException("closing sessions failed: " + e.getMessage(), null, e);
    }
  }
}
