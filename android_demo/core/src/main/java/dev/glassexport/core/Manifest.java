package dev.glassexport.core;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * glass.json, the manifest glass-export writes beside every artifact: the Java mirror of
 * glass_export/artifact.py's Manifest (format version 2), field for field.
 */
public final class Manifest {
  public static final String FORMAT = "glass-export-artifact";
  public static final int FORMAT_VERSION = 3;

  public final Path directory;
  public final String toolVersion;
  public final String target;
  // model
  public final String modelType;
  public final int numLayers;
  public final int hiddenSize;
  public final int intermediateSize;
  public final String activation;
  public final String fingerprint;
  // selection
  public final String method;
  public final double density;
  public final Double lambda;
  public final long seed;
  public final int k;
  public final int m;
  public final boolean sparseDecode;
  // quantization
  public final String weights;
  public final Integer bits;
  public final Integer groupSize;
  public final Integer accuracyLevel;
  // limits and KV cache
  public final int maxSeqLen;
  public final int numKvHeads;
  public final int headDim;
  public final List<String> pastNames;
  public final List<String> presentNames;
  // tokenizer
  public final Set<Long> eosTokenIds;
  public final Long bosTokenId;
  public final boolean addBos;
  // files and runtime
  public final Map<String, String> files;
  public final Map<String, Long> fileBytes;
  public final String nativeLibrary;
  /** runtime.custom_ops: the kernels outside the portable set the program calls (ExecuTorch; empty for ONNX). */
  public final List<String> customOps;
  /** runtime.prefill_buckets: the qnn target's static prefill lengths, ascending (empty for other targets). */
  public final List<Integer> prefillBuckets;
  /** runtime.htp_arch: the HTP version the qnn target's context binaries were compiled for, or null. */
  public final Integer htpArch;

  private Manifest(Path directory, JsonObject json) {
    this.directory = directory;
    this.toolVersion = json.get("tool_version").getAsString();
    this.target = json.get("target").getAsString();
    JsonObject model = json.getAsJsonObject("model");
    this.modelType = model.get("model_type").getAsString();
    this.numLayers = model.get("num_layers").getAsInt();
    this.hiddenSize = model.get("hidden_size").getAsInt();
    this.intermediateSize = model.get("intermediate_size").getAsInt();
    this.activation = model.get("activation").getAsString();
    this.fingerprint = model.get("fingerprint").getAsString();
    JsonObject selection = json.getAsJsonObject("selection");
    this.method = selection.get("method").getAsString();
    this.density = selection.get("density").getAsDouble();
    this.lambda = selection.get("lambda").isJsonNull() ? null : selection.get("lambda").getAsDouble();
    this.seed = selection.get("seed").getAsLong();
    this.k = selection.get("k").getAsInt();
    this.m = selection.get("m").getAsInt();
    this.sparseDecode = selection.get("sparse_decode").getAsBoolean();
    JsonObject quant = json.getAsJsonObject("quantization");
    this.weights = quant.get("weights").getAsString();
    this.bits = quant.has("bits") ? quant.get("bits").getAsInt() : null;
    this.groupSize = quant.has("group_size") ? quant.get("group_size").getAsInt() : null;
    this.accuracyLevel = quant.has("accuracy_level") ? quant.get("accuracy_level").getAsInt() : null;
    this.maxSeqLen = json.get("max_seq_len").getAsInt();
    JsonObject kv = json.getAsJsonObject("kv_cache");
    this.numKvHeads = kv.get("num_kv_heads").getAsInt();
    this.headDim = kv.get("head_dim").getAsInt();
    this.pastNames = strings(kv.getAsJsonArray("past_names"));
    this.presentNames = strings(kv.getAsJsonArray("present_names"));
    JsonObject tokenizer = json.getAsJsonObject("tokenizer");
    this.eosTokenIds = new HashSet<>();
    for (JsonElement id : tokenizer.getAsJsonArray("eos_token_ids")) eosTokenIds.add(id.getAsLong());
    JsonElement bos = tokenizer.get("bos_token_id");
    this.bosTokenId = bos == null || bos.isJsonNull() ? null : bos.getAsLong();
    this.addBos = tokenizer.get("add_bos").getAsBoolean();
    this.files = new LinkedHashMap<>();
    for (Map.Entry<String, JsonElement> file : json.getAsJsonObject("files").entrySet()) {
      files.put(file.getKey(), file.getValue().getAsString());
    }
    this.fileBytes = new LinkedHashMap<>();
    for (Map.Entry<String, JsonElement> file : json.getAsJsonObject("checksums").entrySet()) {
      fileBytes.put(file.getKey(), file.getValue().getAsJsonObject().get("bytes").getAsLong());
    }
    JsonObject runtime = json.getAsJsonObject("runtime");
    this.nativeLibrary = runtime.has("native_library") ? runtime.get("native_library").getAsString() : null;
    this.customOps = runtime.has("custom_ops") && runtime.get("custom_ops").isJsonArray()
        ? strings(runtime.getAsJsonArray("custom_ops")) : List.of();
    this.prefillBuckets = new ArrayList<>();
    if (runtime.has("prefill_buckets")) {
      for (JsonElement bucket : runtime.getAsJsonArray("prefill_buckets")) prefillBuckets.add(bucket.getAsInt());
    }
    this.htpArch = runtime.has("htp_arch") && !runtime.get("htp_arch").isJsonNull() ? runtime.get("htp_arch").getAsInt() : null;
  }

  private static List<String> strings(JsonArray array) {
    List<String> out = new ArrayList<>();
    for (JsonElement e : array) out.add(e.getAsString());
    return out;
  }

  /** k = round(density * m), halves up (glass_export.selection.keep_count); m for the dense twin. */
  static int keepCount(boolean sparse, double density, int m) {
    if (!sparse) return m;
    return (int) Math.min(m, Math.max(1, Math.floor(density * m + 0.5)));
  }

  /** Reads and checks glass.json in an artifact directory: format, version, derived values, every file and its size. */
  public static Manifest load(Path directory) {
    Path path = directory.resolve("glass.json");
    if (!Files.isDirectory(directory)) {
      throw new GlassException("artifact directory " + directory + " does not exist", "push the artifact with adb first");
    }
    if (!Files.isRegularFile(path)) {
      throw new GlassException(directory + " has no glass.json", "pick a directory written by `glass-export export`");
    }
    JsonObject json;
    try {
      json = JsonParser.parseString(Files.readString(path, StandardCharsets.UTF_8)).getAsJsonObject();
    } catch (IOException | RuntimeException e) {
      throw new GlassException(path + " is not valid JSON: " + e.getMessage(), "re-export the artifact", e);
    }
    if (!json.has("format") || !FORMAT.equals(json.get("format").getAsString())) {
      throw new GlassException(path + " is not a glass-export manifest", "re-export the artifact");
    }
    int version = json.get("format_version").getAsInt();
    if (version != FORMAT_VERSION) {
      throw new GlassException(
          path + " has manifest version " + version + ", this app reads version " + FORMAT_VERSION,
          "re-export the artifact with a matching glass-export");
    }
    Manifest manifest;
    try {
      manifest = new Manifest(directory, json);
    } catch (RuntimeException e) {
      throw new GlassException(path + " lacks a field this app needs: " + e.getMessage(), "re-export the artifact", e);
    }
    int expectedK = keepCount(manifest.sparseDecode, manifest.density, manifest.intermediateSize);
    if (manifest.k != expectedK || manifest.m != manifest.intermediateSize) {
      throw new GlassException(
          path + " says k = " + manifest.k + ", m = " + manifest.m + ", but the density and the model give k = "
              + expectedK + ", m = " + manifest.intermediateSize,
          "re-export the artifact");
    }
    for (Map.Entry<String, String> file : manifest.files.entrySet()) {
      if (!Files.isRegularFile(directory.resolve(file.getValue()))) {
        throw new GlassException(
            "artifact " + directory + " is missing " + file.getValue() + " (" + file.getKey() + ")",
            "push the whole artifact directory");
      }
    }
    for (Map.Entry<String, Long> file : manifest.fileBytes.entrySet()) {
      Path p = directory.resolve(file.getKey());
      try {
        if (!Files.isRegularFile(p) || Files.size(p) != file.getValue()) {
          throw new GlassException(
              p + " is missing or has another size than the manifest recorded (" + file.getValue() + " bytes)",
              "push the whole artifact directory again");
        }
      } catch (IOException e) {
        throw new GlassException("cannot read " + p + ": " + e.getMessage(), "push the artifact again", e);
      }
    }
    if (!Files.isRegularFile(directory.resolve("tokenizer.json"))) {
      throw new GlassException("artifact " + directory + " has no tokenizer.json", "push the whole artifact directory");
    }
    return manifest;
  }

  public Path file(String role) {
    return directory.resolve(files.get(role));
  }

  /** The fields as one flat map, named as in glass.json: the cross-language test compares it with Python's reading. */
  public Map<String, Object> fields() {
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("tool_version", toolVersion);
    out.put("target", target);
    out.put("model.model_type", modelType);
    out.put("model.num_layers", (long) numLayers);
    out.put("model.hidden_size", (long) hiddenSize);
    out.put("model.intermediate_size", (long) intermediateSize);
    out.put("model.activation", activation);
    out.put("model.fingerprint", fingerprint);
    out.put("selection.method", method);
    out.put("selection.density", density);
    out.put("selection.lambda", lambda);
    out.put("selection.seed", seed);
    out.put("selection.k", (long) k);
    out.put("selection.m", (long) m);
    out.put("selection.sparse_decode", sparseDecode);
    out.put("quantization.weights", weights);
    out.put("quantization.bits", bits == null ? null : (long) bits);
    out.put("quantization.group_size", groupSize == null ? null : (long) groupSize);
    out.put("quantization.accuracy_level", accuracyLevel == null ? null : (long) accuracyLevel);
    out.put("max_seq_len", (long) maxSeqLen);
    out.put("kv_cache.num_layers", (long) numLayers);
    out.put("kv_cache.num_kv_heads", (long) numKvHeads);
    out.put("kv_cache.head_dim", (long) headDim);
    out.put("kv_cache.past_names", pastNames);
    out.put("kv_cache.present_names", presentNames);
    out.put("tokenizer.bos_token_id", bosTokenId);
    out.put("tokenizer.eos_token_ids", new ArrayList<>(new java.util.TreeSet<>(eosTokenIds)));
    out.put("tokenizer.add_bos", addBos);
    out.put("files", files);
    out.put("runtime.native_library", nativeLibrary);
    return out;
  }
}
