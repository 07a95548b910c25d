package dev.glassexport.core;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * ONNX Runtime over a qnn artifact (docs/npu.md), as glass_export/runtime/qnn_backend.py runs it: a prompt
 * runs in the smallest static prefill bucket that holds it, right-padded with a mask; select.onnx turns the
 * layers' local scores into the kept indices on the CPU; the KV cache is one host buffer [1, kv_heads,
 * max_seq_len, head_dim] per layer and kind, which each decode step reads whole (a static input, as the HTP
 * needs) and whose new position it returns.
 *
 * <p>HTP: the prefill and decode graphs on the QNN execution provider's HTP backend with CPU fallback
 * disabled, from their context binaries when the export made them (--htp-arch): what a phone runs, with
 * the onnxruntime-android-qnn package. CPU: the same QDQ graphs on the CPU provider, which the host tests
 * use (the onnxruntime JVM jar has no QNN provider).
 */
public final class QnnBackend implements Backend {
  public enum Accelerator { HTP, CPU }

  private static final String LOCAL_SCORES = "glass_local_scores";
  private final OrtEnvironment env = OrtEnvironment.getEnvironment();
  private final Manifest manifest;
  private final Accelerator accelerator;
  private final OrtSession.SessionOptions graphOptions;
  private final OrtSession select;
  private final OrtSession decode;
  private final Map<Integer, OrtSession> prefills = new TreeMap<>();
  private final List<OnnxTensor> cacheTensors;
  private final List<FloatBuffer> cache; // the buffers the cache tensors read, written here

  public QnnBackend(Manifest manifest, Accelerator accelerator, int threads) {
    if (!"qnn".equals(manifest.target)) {
      throw new GlassException("artifact target is " + manifest.target + ", not qnn", "pick a qnn artifact");
    }
    this.manifest = manifest;
    this.accelerator = accelerator;
    try {
      OrtSession.SessionOptions cpuOptions = new OrtSession.SessionOptions();
      if (threads > 0) cpuOptions.setIntraOpNumThreads(threads);
      this.graphOptions = accelerator == Accelerator.CPU ? cpuOptions : htpOptions(manifest);
      this.select = env.createSession(manifest.file("select").toString(), cpuOptions);
      this.decode = env.createSession(graphFile("decode"), graphOptions);
      this.cacheTensors = OrtBackend.allocateCache(env, manifest);
      this.cache = cacheTensors.stream().map(t -> (FloatBuffer) t.getBufferRef().orElseThrow()).toList();
    } catch (OrtException e) {
      throw new GlassException("onnxruntime cannot load " + manifest.directory + " (" + accelerator + "): " + e.getMessage(),
          "re-export the artifact", e);
    }
  }

  /** The HTP with CPU fallback disabled, so a node the HTP cannot run is an error, not a silent CPU run. */
  private static OrtSession.SessionOptions htpOptions(Manifest manifest) throws OrtException {
    OrtSession.SessionOptions options = new OrtSession.SessionOptions();
    options.addConfigEntry("session.disable_cpu_ep_fallback", "1");
    Map<String, String> provider = new HashMap<>();
    provider.put("backend_path", "libQnnHtp.so");
    if (manifest.htpArch != null) provider.put("htp_arch", manifest.htpArch.toString());
    try {
      options.addQnn(provider);
    } catch (OrtException e) {
      throw new GlassException("this onnxruntime has no QNN execution provider: " + e.getMessage(),
          "on a phone, use the com.qualcomm.qti:onnxruntime-android-qnn package (docs/npu.md); elsewhere, "
              + "Accelerator.CPU runs the artifact's QDQ graphs on the CPU", e);
    }
    return options;
  }

  private String graphFile(String role) {
    String context = role + ".context";
    boolean compiled = accelerator == Accelerator.HTP && manifest.files.containsKey(context);
    return manifest.file(compiled ? context : role).toString();
  }

  @Override
  public String runtime() {
    return "onnxruntime " + env.getVersion() + (accelerator == Accelerator.HTP ? " + QNN" : "");
  }

  @Override
  public String opImplementation() {
    if (accelerator == Accelerator.CPU) return "QDQ graphs on the CPU";
    return manifest.files.containsKey("decode.context") ? "QNN HTP, context binaries for v" + manifest.htpArch : "QNN HTP";
  }

  @Override
  public Prefill prefill(long[] ids) {
    int bucket = manifest.prefillBuckets.stream().filter(b -> b >= ids.length).findFirst().orElse(-1);
    if (bucket < 0) {
      List<Integer> wider = new ArrayList<>(manifest.prefillBuckets);
      wider.add(ids.length);
      throw new GlassException(
          "the prompt has " + ids.length + " tokens; this qnn artifact's prefill buckets take at most "
              + manifest.prefillBuckets.get(manifest.prefillBuckets.size() - 1),
          "shorten the prompt, or re-export with a larger bucket (--prefill-buckets "
              + String.join(",", wider.stream().map(String::valueOf).toList()) + ")");
    }
    long[][] tokens = new long[1][bucket];
    float[][] mask = new float[1][bucket];
    for (int i = 0; i < ids.length; i++) {
      tokens[0][i] = ids[i];
      mask[0][i] = 1.0f;
    }
    Map<String, OnnxTensor> feeds = new HashMap<>();
    try {
      OrtSession session = prefills.get(bucket);
      if (session == null) {
        session = env.createSession(graphFile("prefill." + bucket), graphOptions);
        prefills.put(bucket, session);
      }
      feeds.put("input_ids", OnnxTensor.createTensor(env, tokens));
      feeds.put("attention_mask", OnnxTensor.createTensor(env, mask));
      feeds.put("last_position", OnnxTensor.createTensor(env, new long[] {ids.length - 1}));
      try (OrtSession.Result out = session.run(feeds)) {
        float[] logits = ((float[][][]) out.get("logits").get().getValue())[0][0];
        for (int i = 0; i < cache.size(); i++) startCache(cache.get(i), (OnnxTensor) out.get(manifest.presentNames.get(i)).get(), bucket, ids.length);
        return new Prefill(logits, select(out));
      }
    } catch (OrtException e) {
      throw new GlassException("prefill failed: " + e.getMessage(), null, e);
    } finally {
      feeds.values().forEach(OnnxTensor::close);
    }
  }

  /** The kept indices [layers][k]: select.onnx over the stacked local scores, or its constant set. */
  private long[][] select(OrtSession.Result prefill) throws OrtException {
    Map<String, OnnxTensor> feeds = new HashMap<>();
    if (prefill.get(LOCAL_SCORES + ".0").isPresent()) {
      float[][] scores = new float[manifest.numLayers][];
      for (int layer = 0; layer < scores.length; layer++) {
        scores[layer] = (float[]) prefill.get(LOCAL_SCORES + "." + layer).get().getValue();
      }
      feeds.put(LOCAL_SCORES, OnnxTensor.createTensor(env, scores));
    }
    try (OrtSession.Result out = select.run(feeds)) {
      return (long[][]) out.get("glass_indices").get().getValue();
    } finally {
      feeds.values().forEach(OnnxTensor::close);
    }
  }

  /** A new sequence: the prompt's positions 0..length-1 from a prefill present [1, kv_heads, bucket, head_dim]; the rest zero. */
  private void startCache(FloatBuffer buffer, OnnxTensor present, int bucket, int length) {
    FloatBuffer source = present.getFloatBuffer();
    for (int i = 0; i < buffer.capacity(); i++) buffer.put(i, 0.0f);
    int headDim = manifest.headDim;
    for (int head = 0; head < manifest.numKvHeads; head++) {
      int from = head * bucket * headDim, to = head * manifest.maxSeqLen * headDim;
      for (int i = 0; i < length * headDim; i++) buffer.put(to + i, source.get(from + i));
    }
  }

  @Override
  public float[] decode(long token, long position, long[][] indices) {
    int seq = manifest.maxSeqLen, headDim = manifest.headDim;
    if (position < 0 || position >= seq) {
      throw new GlassException("position " + position + " is outside the cache of " + seq, "re-export with a larger --max-seq-len");
    }
    float[][][][] mask = new float[1][1][1][seq + 1];
    for (int j = 0; j < position; j++) mask[0][0][0][j] = 1.0f;
    mask[0][0][0][seq] = 1.0f; // this step's own key, appended after the cache
    Map<String, OnnxTensor> owned = new HashMap<>();
    try {
      owned.put("input_ids", OnnxTensor.createTensor(env, new long[][] {{token}}));
      owned.put("position_ids", OnnxTensor.createTensor(env, new long[][] {{position}}));
      owned.put("attention_mask", OnnxTensor.createTensor(env, mask));
      if (decode.getInputNames().contains("glass_indices")) owned.put("glass_indices", OnnxTensor.createTensor(env, indices));
      Map<String, OnnxTensor> feeds = new HashMap<>(owned);
      for (int i = 0; i < cacheTensors.size(); i++) feeds.put(manifest.pastNames.get(i), cacheTensors.get(i));
      try (OrtSession.Result out = decode.run(feeds)) {
        for (int i = 0; i < cache.size(); i++) {
          FloatBuffer step = ((OnnxTensor) out.get(manifest.presentNames.get(i)).get()).getFloatBuffer(); // [1, kv_heads, 1, head_dim]
          for (int head = 0; head < manifest.numKvHeads; head++) {
            int to = (head * seq + (int) position) * headDim;
            for (int d = 0; d < headDim; d++) cache.get(i).put(to + d, step.get(head * headDim + d));
          }
        }
        return ((float[][][]) out.get("logits").get().getValue())[0][0];
      }
    } catch (OrtException e) {
      throw new GlassException("decode failed: " + e.getMessage(), null, e);
    } finally {
      owned.values().forEach(OnnxTensor::close);
    }
  }

  @Override
  public void close() {
    cacheTensors.forEach(OnnxTensor::close);
    cacheTensors.clear();
    try {
      for (OrtSession session : prefills.values()) session.close();
      prefills.clear();
      decode.close();
      select.close();
    } catch (OrtException e) {
      throw new GlassException("closing sessions failed: " + e.getMessage(), null, e);
    }
  }
}
