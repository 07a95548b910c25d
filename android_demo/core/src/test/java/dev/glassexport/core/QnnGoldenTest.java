package dev.glassexport.core;

import static dev.glassexport.core.GoldenTest.assertReproduces;
import static dev.glassexport.core.GoldenTest.readGolden;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * The engine on a qnn artifact against what Python's QnnBackend did with the same QDQ graphs on the CPU
 * (tests/test_android_golden.py): bucket choice and padding, the host KV cache, select.onnx, the decode masks.
 * Token ids, kept indices, greedy tokens and text must match exactly, the first logits within 32 steps of
 * their uint16 quantisation (2e-4 a step here, logits within +-7): the JVM jar's onnxruntime 1.29 (the
 * newest on Maven Central) rounds some QDQ kernels differently from Python's 1.32, measured 0-13 steps
 * (Python alone gives the same logits with 1 or 2 threads); a padding or mask error moves them by far more. The HTP itself
 * is only on a phone: here the QNN path must fail with a clear message, since the JVM jar has no QNN provider.
 */
class QnnGoldenTest {
  static Path artifact() {
    return GoldenTest.goldenDir().resolve("qnn");
  }

  @Test
  void qdqGraphsOnTheCpuReproducePythonRun() throws Exception {
    JsonObject data = readGolden("qnn.json");
    Manifest manifest = Manifest.load(artifact());
    assertEquals("qnn", manifest.target);
    assertEquals(List.of(8, 48), manifest.prefillBuckets);
    BpeTokenizer tokenizer = new BpeTokenizer(artifact().resolve("tokenizer.json"));
    try (QnnBackend backend = new QnnBackend(manifest, QnnBackend.Accelerator.CPU, 2)) {
      assertEquals("QDQ graphs on the CPU", backend.opImplementation());
      Generator generator = new Generator(backend, manifest, tokenizer);
      manifest.eosTokenIds.clear(); // EOS off, as on the Python side: compare every step
      int newTokens = data.get("new_tokens").getAsInt();
      float tolerance = 32 * data.get("logits_step").getAsFloat();
      for (JsonElement e : data.getAsJsonArray("records")) assertReproduces(generator, e.getAsJsonObject(), newTokens, tolerance);
      // a second run on the same backend starts from a clean cache
      assertReproduces(generator, data.getAsJsonArray("records").get(0).getAsJsonObject(), newTokens, tolerance);
    }
  }

  @Test
  void promptBeyondTheLargestBucketNamesTheBucketsThatWouldFit() {
    Manifest manifest = Manifest.load(artifact());
    try (QnnBackend backend = new QnnBackend(manifest, QnnBackend.Accelerator.CPU, 1)) {
      GlassException tooLong = assertThrows(GlassException.class, () -> backend.prefill(new long[50]));
      assertTrue(tooLong.getMessage().contains("at most 48") && tooLong.getMessage().contains("--prefill-buckets 8,48,50"),
          tooLong.getMessage());
    }
  }

  @Test
  void htpWithoutTheQnnProviderIsAClearError() {
    Manifest manifest = Manifest.load(artifact());
    GlassException noQnn = assertThrows(GlassException.class, () -> new QnnBackend(manifest, QnnBackend.Accelerator.HTP, 1));
    assertTrue(noQnn.getMessage().contains("no QNN execution provider") && noQnn.getMessage().contains("onnxruntime-android-qnn"),
        noQnn.getMessage());
    GlassException notQnn = assertThrows(GlassException.class,
        () -> new QnnBackend(Manifest.load(GoldenTest.goldenDir().resolve("artifact")), QnnBackend.Accelerator.CPU, 1));
    assertTrue(notQnn.getMessage().contains("not qnn"), notQnn.getMessage());
  }
}
