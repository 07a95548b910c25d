package dev.glassexport.core;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * The JVM engine against golden data the Python side wrote (tests/test_android_golden.py) for the
 * same ONNX artifact: token ids, kept indices, first logits (within 1e-4), greedy tokens, text.
 */
class GoldenTest {
  static Path golden;
  static JsonObject data;

  @BeforeAll
  static void load() throws Exception {
    golden = goldenDir();
    data = readGolden("golden.json");
  }

  /** Where tests/test_android_golden.py wrote the golden data. */
  static Path goldenDir() {
    return Path.of(System.getProperty("glass.golden", "../build/golden"));
  }

  static JsonObject readGolden(String name) throws Exception {
    Path file = goldenDir().resolve(name);
    assertTrue(Files.isRegularFile(file), file + " missing: run the Python tests first (bash scripts/test.sh)");
    return JsonParser.parseString(Files.readString(file)).getAsJsonObject();
  }

  static long[] longs(JsonArray array) {
    long[] out = new long[array.size()];
    for (int i = 0; i < out.length; i++) out[i] = array.get(i).getAsLong();
    return out;
  }

  /**
   * One golden record reproduced by a generator with EOS off: prompt ids, streamed and greedy tokens,
   * kept indices, first logits within 1e-4, text, and measured timings.
   */
  static void assertReproduces(Generator generator, JsonObject record, int newTokens) {
    assertReproduces(generator, record, newTokens, 1e-4f);
  }

  /** As above, the first logits within `logitsTolerance`. */
  static void assertReproduces(Generator generator, JsonObject record, int newTokens, float logitsTolerance) {
    String prompt = record.get("prompt").getAsString();
    List<Long> streamed = new ArrayList<>();
    Generator.Result result = generator.generate(prompt, newTokens, Sampler.greedy(), (t, text) -> streamed.add(t));
    assertArrayEquals(longs(record.getAsJsonArray("ids")), generator.encode(prompt), prompt);
    assertEquals(result.tokens, streamed);
    assertArrayEquals(longs(record.getAsJsonArray("tokens")), result.tokens.stream().mapToLong(Long::longValue).toArray(),
        prompt);
    JsonArray indices = record.getAsJsonArray("indices");
    assertEquals(indices.size(), result.indices.length);
    for (int layer = 0; layer < indices.size(); layer++) {
      assertArrayEquals(longs(indices.get(layer).getAsJsonArray()), result.indices[layer]);
    }
    JsonArray logits = record.getAsJsonArray("first_logits");
    assertEquals(logits.size(), result.firstLogits.length);
    for (int i = 0; i < logits.size(); i++) assertEquals(logits.get(i).getAsFloat(), result.firstLogits[i], logitsTolerance);
    assertEquals(record.get("text").getAsString(), result.text);
    assertTrue(result.prefillMs > 0 && result.decodeTokensPerSecond() > 0);
  }

  @Test
  void tokenizerMatchesPython() {
    Manifest manifest = Manifest.load(golden.resolve("artifact"));
    BpeTokenizer tokenizer = new BpeTokenizer(golden.resolve("artifact/tokenizer.json"));
    for (JsonElement e : data.getAsJsonArray("records")) {
      JsonObject record = e.getAsJsonObject();
      long[] ids = tokenizer.encode(record.get("prompt").getAsString(), manifest.addBos ? manifest.bosTokenId : null);
      assertArrayEquals(longs(record.getAsJsonArray("ids")), ids, record.get("prompt").getAsString());
      assertEquals(record.get("text").getAsString(), tokenizer.decode(longs(record.getAsJsonArray("tokens"))));
    }
  }

  @Test
  void onnxBackendReproducesPythonRun() {
    Manifest manifest = Manifest.load(golden.resolve("artifact"));
    BpeTokenizer tokenizer = new BpeTokenizer(golden.resolve("artifact/tokenizer.json"));
    int newTokens = data.get("new_tokens").getAsInt();
    try (OrtBackend backend = new OrtBackend(manifest, null, 2)) {
      assertEquals("ONNX function fallback", backend.opImplementation());
      Generator generator = new Generator(backend, manifest, tokenizer);
      manifest.eosTokenIds.clear(); // EOS off, as on the Python side: compare every step
      for (JsonElement e : data.getAsJsonArray("records")) assertReproduces(generator, e.getAsJsonObject(), newTokens);
    }
  }

  @Test
  void nativeOpLibraryIsRegisteredAndGivesTheSameTokens() {
    Manifest manifest = Manifest.load(golden.resolve("artifact"));
    Path libDir = Path.of(System.getProperty("glass.nativeLibDir", "../../runtime_ops/glass_ops/lib"));
    assertTrue(Files.isRegularFile(libDir.resolve(manifest.nativeLibrary)),
        libDir.resolve(manifest.nativeLibrary) + " missing: run `bash runtime_ops/build.sh` first");
    BpeTokenizer tokenizer = new BpeTokenizer(golden.resolve("artifact/tokenizer.json"));
    try (OrtBackend backend = new OrtBackend(manifest, libDir, 2)) {
      assertTrue(backend.opImplementation().startsWith("native ("), backend.opImplementation());
      Generator generator = new Generator(backend, manifest, tokenizer);
      manifest.eosTokenIds.clear();
      JsonObject record = data.getAsJsonArray("records").get(0).getAsJsonObject();
      Generator.Result result = generator.generate(
          record.get("prompt").getAsString(), data.get("new_tokens").getAsInt(), Sampler.greedy(), null);
      assertArrayEquals(longs(record.getAsJsonArray("tokens")), result.tokens.stream().mapToLong(Long::longValue).toArray());
      JsonArray logits = record.getAsJsonArray("first_logits");
      for (int i = 0; i < logits.size(); i++) assertEquals(logits.get(i).getAsFloat(), result.firstLogits[i], 1e-4f);
    }
  }

  /** Java and Python read glass.json the same way: every field, compared with what the Python side read. */
  @Test
  void manifestFieldsMatchPython() {
    Map<String, Object> mine = Manifest.load(golden.resolve("artifact")).fields();
    JsonObject python = data.getAsJsonObject("manifest_fields");
    assertEquals(new java.util.TreeSet<>(python.keySet()), new java.util.TreeSet<>(mine.keySet()));
    for (String key : python.keySet()) {
      assertEquals(normalise(python.get(key)), normalise(new com.google.gson.Gson().toJsonTree(mine.get(key))), key);
    }
    assertEquals("int4", mine.get("quantization.weights"));
  }

  /** JSON numbers compared by value (Python writes 1.0 where Java reads 1). */
  static Object normalise(JsonElement element) {
    if (element == null || element.isJsonNull()) return null;
    if (element.isJsonPrimitive() && element.getAsJsonPrimitive().isNumber()) return element.getAsDouble();
    if (element.isJsonArray()) {
      List<Object> out = new ArrayList<>();
      for (JsonElement e : element.getAsJsonArray()) out.add(normalise(e));
      return out;
    }
    if (element.isJsonObject()) {
      Map<String, Object> out = new java.util.TreeMap<>();
      for (Map.Entry<String, JsonElement> e : element.getAsJsonObject().entrySet()) out.put(e.getKey(), normalise(e.getValue()));
      return out;
    }
    return element.getAsJsonPrimitive().isBoolean() ? (Object) element.getAsBoolean() : element.getAsString();
  }

  @Test
  void editedManifestIsRefused() throws Exception {
    Path copy = Files.createTempDirectory("artifact");
    for (Path p : Files.list(golden.resolve("artifact")).toList()) Files.copy(p, copy.resolve(p.getFileName()));
    String json = Files.readString(golden.resolve("artifact/glass.json")).replace("\"k\": 128", "\"k\": 17");
    Files.writeString(copy.resolve("glass.json"), json);
    GlassException edited = org.junit.jupiter.api.Assertions.assertThrows(GlassException.class, () -> Manifest.load(copy));
    assertTrue(edited.getMessage().contains("says k = 17"), edited.getMessage());
    Files.writeString(copy.resolve("glass.json"), Files.readString(golden.resolve("artifact/glass.json")));
    byte[] weights = Files.readAllBytes(copy.resolve("model.onnx.data"));
    Files.write(copy.resolve("model.onnx.data"), java.util.Arrays.copyOf(weights, weights.length - 10));
    GlassException truncated = org.junit.jupiter.api.Assertions.assertThrows(GlassException.class, () -> Manifest.load(copy));
    assertTrue(truncated.getMessage().contains("another size"), truncated.getMessage());
  }

  @Test
  void samplerIsSeededAndTopKOneIsGreedy() {
    float[] logits = {0.1f, 2.0f, -1.0f, 1.9f, 0.5f};
    assertEquals(1, Sampler.greedy().next(logits));
    assertEquals(1, Sampler.sampling(1.0f, 1, 1.0f, 7).next(logits));
    Sampler a = Sampler.sampling(1.0f, 0, 0.9f, 42), b = Sampler.sampling(1.0f, 0, 0.9f, 42);
    for (int i = 0; i < 50; i++) assertEquals(a.next(logits), b.next(logits));
    Sampler wide = Sampler.sampling(5.0f, 0, 1.0f, 3);
    boolean sawOther = false;
    for (int i = 0; i < 200; i++) sawOther |= wide.next(logits) != 1;
    assertTrue(sawOther, "a high temperature must sometimes leave the argmax");
  }

  @Test
  void badArtifactsGetClearMessages() throws Exception {
    Path copy = Files.createTempDirectory("artifact");
    for (Path p : Files.list(golden.resolve("artifact")).toList()) Files.copy(p, copy.resolve(p.getFileName()));
    Files.delete(copy.resolve("decode.onnx"));
    GlassException missing = org.junit.jupiter.api.Assertions.assertThrows(GlassException.class, () -> Manifest.load(copy));
    assertTrue(missing.getMessage().contains("missing decode.onnx"), missing.getMessage());
    String json = Files.readString(golden.resolve("artifact/glass.json")).replace("\"format_version\": 3", "\"format_version\": 9");
    Files.writeString(copy.resolve("glass.json"), json);
    GlassException version = org.junit.jupiter.api.Assertions.assertThrows(GlassException.class, () -> Manifest.load(copy));
    assertTrue(version.getMessage().contains("manifest version 9"), version.getMessage());
    GlassException none = org.junit.jupiter.api.Assertions.assertThrows(
        GlassException.class, () -> Manifest.load(copy.resolve("nope")));
    assertTrue(none.getMessage().contains("does not exist"));
    GlassException empty = org.junit.jupiter.api.Assertions.assertThrows(
        GlassException.class, () -> new Generator(null, Manifest.load(golden.resolve("artifact")), null).generate(" ", 3, Sampler.greedy(), null));
    assertTrue(empty.getMessage().contains("prompt is empty"));
  }

  @Test
  void nativeLibraryForAnotherAbiOrNotAnOpLibraryGetsAClearMessage() throws Exception {
    Manifest manifest = Manifest.load(golden.resolve("artifact"));
    assertTrue(manifest.nativeLibrary != null, "the ONNX manifest names its op library");
    // A real shared library of this JVM's ABI that is not an ORT op library...
    byte[] elf = Files.readAllBytes(Path.of(System.getProperty("java.home"), "lib", "libjava.so"));
    Path hostDir = libraryDir(manifest, elf);
    assertEquals(NativeAbi.ofThisProcess(), NativeAbi.ofLibrary(hostDir.resolve(manifest.nativeLibrary)));
    GlassException notOps = org.junit.jupiter.api.Assertions.assertThrows(
        GlassException.class, () -> new OrtBackend(manifest, hostDir, 1));
    assertTrue(notOps.getMessage().contains("cannot load"), notOps.getMessage());

    // ...the same bytes marked as built for another ABI (e_machine, offset 18, little-endian)...
    boolean hostIsArm = NativeAbi.ofThisProcess().equals("arm64-v8a");
    elf[18] = (byte) (hostIsArm ? 62 : 183);
    elf[19] = 0;
    Path otherDir = libraryDir(manifest, elf);
    String other = hostIsArm ? "x86_64" : "arm64-v8a";
    GlassException wrongAbi = org.junit.jupiter.api.Assertions.assertThrows(
        GlassException.class, () -> new OrtBackend(manifest, otherDir, 1));
    assertTrue(wrongAbi.getMessage().contains("is built for " + other + ", but this device runs " + NativeAbi.ofThisProcess()),
        wrongAbi.getMessage());

    // ...and a file that is no library at all.
    Path garbageDir = libraryDir(manifest, "not a library".getBytes());
    GlassException garbage = org.junit.jupiter.api.Assertions.assertThrows(
        GlassException.class, () -> new OrtBackend(manifest, garbageDir, 1));
    assertTrue(garbage.getMessage().contains("no ELF header"), garbage.getMessage());
  }

  /** A fresh directory per case: a library ORT tried to load may stay mapped, so it is never rewritten. */
  static Path libraryDir(Manifest manifest, byte[] bytes) throws Exception {
    Path dir = Files.createTempDirectory("jniLibs");
    Files.write(dir.resolve(manifest.nativeLibrary), bytes);
    return dir;
  }
}
