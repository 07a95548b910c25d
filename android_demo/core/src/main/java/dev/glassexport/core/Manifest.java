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
import java.util.List;
import java.util.Map;
import java.util.Set;

/** glass.json, the manifest glass-export writes beside every artifact. */
public final class Manifest {
  public static final String FORMAT = "glass-export-artifact";
  public static final int FORMAT_VERSION = 1;

  public final Path directory;
  public final String target;
  public final String method;
  public final double density;
  public final Double lambda;
  public final int k;
  public final int m;
  public final int numLayers;
  public final int maxSeqLen;
  public final List<String> pastNames;
  public final List<String> presentNames;
  public final Set<Long> eosTokenIds;
  public final Long bosTokenId;
  public final boolean addBos;
  public final String nativeLibrary;
  public final JsonObject files;

  private Manifest(Path directory, JsonObject json) {
    this.directory = directory;
    this.target = json.get("target").getAsString();
    JsonObject selection = json.getAsJsonObject("selection");
    this.method = selection.get("method").getAsString();
    this.density = selection.get("density").getAsDouble();
    this.lambda = selection.get("lambda").isJsonNull() ? null : selection.get("lambda").getAsDouble();
    this.k = selection.get("k").getAsInt();
    this.m = selection.get("m").getAsInt();
    this.maxSeqLen = json.get("max_seq_len").getAsInt();
    JsonObject kv = json.getAsJsonObject("kv_cache");
    this.numLayers = kv.get("num_layers").getAsInt();
    this.pastNames = strings(kv.getAsJsonArray("past_names"));
    this.presentNames = strings(kv.getAsJsonArray("present_names"));
    JsonObject tokenizer = json.getAsJsonObject("tokenizer");
    this.eosTokenIds = new HashSet<>();
    for (JsonElement id : tokenizer.getAsJsonArray("eos_token_ids")) eosTokenIds.add(id.getAsLong());
    JsonElement bos = tokenizer.get("bos_token_id");
    this.bosTokenId = bos == null || bos.isJsonNull() ? null : bos.getAsLong();
    this.addBos = tokenizer.get("add_bos").getAsBoolean();
    JsonObject onnx = json.has("onnx") ? json.getAsJsonObject("onnx") : null;
    this.nativeLibrary = onnx != null && onnx.has("native_library") ? onnx.get("native_library").getAsString() : null;
    this.files = json.getAsJsonObject("files");
  }

  private static List<String> strings(JsonArray array) {
    List<String> out = new ArrayList<>();
    for (JsonElement e : array) out.add(e.getAsString());
    return out;
  }

  /** Reads and checks glass.json in an artifact directory: format, version, and that every file is there. */
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
    for (Map.Entry<String, JsonElement> file : manifest.files.entrySet()) {
      if (!Files.isRegularFile(directory.resolve(file.getValue().getAsString()))) {
        throw new GlassException(
            "artifact " + directory + " is missing " + file.getValue().getAsString() + " (" + file.getKey() + ")",
            "push the whole artifact directory");
      }
    }
    if (!Files.isRegularFile(directory.resolve("tokenizer.json"))) {
      throw new GlassException("artifact " + directory + " has no tokenizer.json", "push the whole artifact directory");
    }
    return manifest;
  }

  public Path file(String role) {
    return directory.resolve(files.get(role).getAsString());
  }
}
