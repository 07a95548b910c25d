package dev.glassexport.core;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.io.Reader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Properties;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The ExecuTorch backend (our JNI bridge, android_demo/jni) against the golden .pte and what Python's
 * ExecuTorch runtime produced for it (tests/test_android_golden.py): token ids, kept indices, first
 * logits within 1e-4, greedy tokens and text. Needs `bash android_demo/jni/build.sh` (scripts/test.sh runs it).
 */
class ExecuTorchGoldenTest {
  static Path golden;
  static JsonObject data;

  @BeforeAll
  static void load() throws Exception {
    golden = GoldenTest.goldenDir();
    data = GoldenTest.readGolden("executorch.json");
    Path host = Path.of(System.getProperty("glass.etHost", "../jni/build/host.properties"));
    assertTrue(Files.isRegularFile(host), host + " missing: build the bridge first (bash android_demo/jni/build.sh)");
    Properties properties = new Properties();
    try (Reader in = Files.newBufferedReader(host)) {
      properties.load(in);
    }
    for (String key : properties.stringPropertyNames()) System.setProperty(key, properties.getProperty(key));
  }

  static Manifest manifest() {
    return Manifest.load(golden.resolve("executorch"));
  }

  @Test
  void executorchBackendReproducesPythonRun() {
    Manifest manifest = manifest();
    assertEquals("executorch", manifest.target);
    BpeTokenizer tokenizer = new BpeTokenizer(golden.resolve("executorch/tokenizer.json"));
    int newTokens = data.get("new_tokens").getAsInt();
    try (ExecuTorchBackend backend = new ExecuTorchBackend(manifest, null, 2)) {
      assertEquals("native glass kernels (glass::gather_ffn.out)", backend.opImplementation());
      assertTrue(backend.runtime().startsWith("executorch (JNI bridge, 2 threads)"), backend.runtime());
      Generator generator = new Generator(backend, manifest, tokenizer);
      manifest.eosTokenIds.clear(); // EOS off, as on the Python side: compare every step
      for (JsonElement e : data.getAsJsonArray("records")) {
        GoldenTest.assertReproduces(generator, e.getAsJsonObject(), newTokens);
      }
    }
  }

  /** The int4 program: the quantised glass kernels (the decode's residual_norm_gather_ffn_q) through the same bridge. */
  @Test
  void quantisedProgramReproducesPythonRun() throws Exception {
    JsonObject int4 = GoldenTest.readGolden("executorch-int4.json");
    Manifest manifest = Manifest.load(golden.resolve("executorch-int4"));
    assertEquals("int4", manifest.weights);
    BpeTokenizer tokenizer = new BpeTokenizer(golden.resolve("executorch-int4/tokenizer.json"));
    try (ExecuTorchBackend backend = new ExecuTorchBackend(manifest, null, 2)) {
      assertEquals("native glass kernels (glass::residual_norm_gather_ffn_q.out)", backend.opImplementation());
      for (JsonElement op : int4.getAsJsonArray("custom_ops")) {
        assertTrue(ExecuTorchBackend.hasOperator(op.getAsString()), op.getAsString());
      }
      Generator generator = new Generator(backend, manifest, tokenizer);
      manifest.eosTokenIds.clear();
      for (JsonElement e : int4.getAsJsonArray("records")) {
        GoldenTest.assertReproduces(generator, e.getAsJsonObject(), int4.get("new_tokens").getAsInt());
      }
    }
  }

  @Test
  void theKernelsTheProgramCallsAreRegistered() {
    try (ExecuTorchBackend backend = new ExecuTorchBackend(manifest(), null, 0)) {
      for (JsonElement op : data.getAsJsonArray("custom_ops")) {
        assertTrue(ExecuTorchBackend.hasOperator(op.getAsString()), op.getAsString());
      }
      assertTrue(!ExecuTorchBackend.hasOperator("glass::no_such_op.out"));
    }
  }

  /** A bridge without a kernel the program calls (here: no LLM kernels preloaded) fails with a message, not a crash. */
  @Test
  void missingKernelsGetAClearMessage() throws Exception {
    ProcessBuilder child = new ProcessBuilder(
        Path.of(System.getProperty("java.home"), "bin", "java").toString(),
        "-cp", System.getProperty("java.class.path"),
        "-Dglass.et.jni=" + System.getProperty("glass.et.jni"),
        MissingKernelsMain.class.getName(), golden.resolve("executorch").toString());
    child.redirectErrorStream(true);
    Process process = child.start();
    String out = new String(process.getInputStream().readAllBytes());
    assertTrue(process.waitFor(60, java.util.concurrent.TimeUnit.SECONDS));
    assertEquals(0, process.exitValue(), out);
    assertTrue(out.contains("GLASS ExecuTorch cannot load") && out.contains("Error::OperatorMissing")
        && out.contains("fix: link the glass kernels and ExecuTorch's LLM custom ops"), out);
  }

  @Test
  void badProgramsAndMisuseGetClearMessages() throws Exception {
    // an ONNX artifact is refused by target
    GlassException onnx = assertThrows(GlassException.class,
        () -> new ExecuTorchBackend(Manifest.load(golden.resolve("artifact")), null, 0));
    assertTrue(onnx.getMessage().contains("not executorch"), onnx.getMessage());
    // a program file of the recorded size that is no program
    Path copy = Files.createTempDirectory("pte");
    for (Path p : Files.list(golden.resolve("executorch")).toList()) Files.copy(p, copy.resolve(p.getFileName()));
    Files.write(copy.resolve("model.pte"), new byte[(int) Files.size(copy.resolve("model.pte"))]);
    GlassException garbage = assertThrows(GlassException.class, () -> new ExecuTorchBackend(Manifest.load(copy), null, 0));
    assertTrue(garbage.getMessage().contains("ExecuTorch cannot load") && garbage.getMessage().contains("load the program"),
        garbage.getMessage());
    // a closed backend
    ExecuTorchBackend backend = new ExecuTorchBackend(manifest(), null, 0);
    backend.close();
    GlassException closed = assertThrows(GlassException.class, () -> backend.prefill(new long[] {1, 2}));
    assertTrue(closed.getMessage().contains("closed"), closed.getMessage());
    // a prompt longer than the program's bound fails in the runtime, as an exception
    try (ExecuTorchBackend open = new ExecuTorchBackend(manifest(), null, 0)) {
      GlassException tooLong = assertThrows(GlassException.class, () -> open.prefill(new long[manifest().maxSeqLen + 1]));
      assertTrue(tooLong.getMessage().startsWith("prefill failed: set input 0"), tooLong.getMessage());
    }
  }
}
