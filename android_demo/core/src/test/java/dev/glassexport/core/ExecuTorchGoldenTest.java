package dev.glassexport.core;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.Reader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
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
    golden = Path.of(System.getProperty("glass.golden", "../build/golden"));
    Path file = golden.resolve("executorch.json");
    assertTrue(Files.isRegularFile(file), file + " missing: run the Python tests first (bash scripts/test.sh)");
    data = JsonParser.parseString(Files.readString(file)).getAsJsonObject();
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
        JsonObject record = e.getAsJsonObject();
        List<Long> streamed = new ArrayList<>();
        Generator.Result result =
            generator.generate(record.get("prompt").getAsString(), newTokens, Sampler.greedy(), (t, text) -> streamed.add(t));
        assertArrayEquals(GoldenTest.longs(record.getAsJsonArray("ids")), generator.encode(record.get("prompt").getAsString()));
        assertEquals(result.tokens, streamed);
        assertArrayEquals(GoldenTest.longs(record.getAsJsonArray("tokens")),
            result.tokens.stream().mapToLong(Long::longValue).toArray(), record.get("prompt").getAsString());
        JsonArray indices = record.getAsJsonArray("indices");
        assertEquals(indices.size(), result.indices.length);
        for (int layer = 0; layer < indices.size(); layer++) {
          assertArrayEquals(GoldenTest.longs(indices.get(layer).getAsJsonArray()), result.indices[layer]);
        }
        JsonArray logits = record.getAsJsonArray("first_logits");
        assertEquals(logits.size(), result.firstLogits.length);
        for (int i = 0; i < logits.size(); i++) assertEquals(logits.get(i).getAsFloat(), result.firstLogits[i], 1e-4f);
        assertEquals(record.get("text").getAsString(), result.text);
        assertTrue(result.prefillMs > 0 && result.decodeTokensPerSecond() > 0);
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
