package dev.glassexport.core;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Byte-level BPE over a Hugging Face tokenizer.json (the GPT-2 family of tokenizers that Llama 3,
 * Qwen and Phi-3-style exports use): optional Split regex, ByteLevel pre-tokenizer, BPE merges by
 * rank, special tokens matched verbatim, BOS prepended when the manifest says so.
 */
public final class BpeTokenizer {
  /** GPT-2's pre-tokenizer regex, used by ByteLevel when use_regex is true. */
  private static final String GPT2_PATTERN =
      "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

  private final Map<String, Integer> vocab = new HashMap<>();
  private final Map<Integer, String> idToToken = new HashMap<>();
  private final Map<String, Integer> mergeRanks = new HashMap<>();
  private final Map<String, Integer> specialTokens = new HashMap<>();
  private final Set<Integer> specialIds = new HashSet<>();
  private final Pattern splitPattern;
  private final Pattern specialPattern;
  private final String[] byteToChar = new String[256];
  private final Map<Character, Integer> charToByte = new HashMap<>();

  public BpeTokenizer(Path tokenizerJson) {
    JsonObject root;
    try {
      root = JsonParser.parseString(Files.readString(tokenizerJson, StandardCharsets.UTF_8)).getAsJsonObject();
    } catch (IOException | RuntimeException e) {
      throw new GlassException("cannot read " + tokenizerJson + ": " + e.getMessage(), "re-export the artifact", e);
    }
    JsonObject model = root.getAsJsonObject("model");
    if (model == null || !"BPE".equals(model.get("type").getAsString())) {
      throw new GlassException(tokenizerJson + " is not a BPE tokenizer", "only byte-level BPE tokenizers are supported");
    }
    for (Map.Entry<String, JsonElement> e : model.getAsJsonObject("vocab").entrySet()) {
      vocab.put(e.getKey(), e.getValue().getAsInt());
      idToToken.put(e.getValue().getAsInt(), e.getKey());
    }
    JsonArray merges = model.getAsJsonArray("merges");
    for (int rank = 0; rank < merges.size(); rank++) {
      JsonElement merge = merges.get(rank);
      String key = merge.isJsonArray()
          ? merge.getAsJsonArray().get(0).getAsString() + " " + merge.getAsJsonArray().get(1).getAsString()
          : merge.getAsString();
      mergeRanks.putIfAbsent(key, rank);
    }
    if (root.has("added_tokens")) {
      for (JsonElement token : root.getAsJsonArray("added_tokens")) {
        JsonObject t = token.getAsJsonObject();
        specialTokens.put(t.get("content").getAsString(), t.get("id").getAsInt());
        specialIds.add(t.get("id").getAsInt());
        idToToken.put(t.get("id").getAsInt(), t.get("content").getAsString());
      }
    }
    this.splitPattern = Pattern.compile(preTokenizerPattern(root.get("pre_tokenizer")));
    List<String> quoted = new ArrayList<>();
    specialTokens.keySet().stream().sorted((a, b) -> b.length() - a.length()).forEach(s -> quoted.add(Pattern.quote(s)));
    this.specialPattern = quoted.isEmpty() ? null : Pattern.compile(String.join("|", quoted));
    initByteMap();
  }

  /** The regex that splits text before BPE: a Split pre-tokenizer's, else GPT-2's for ByteLevel. */
  private static String preTokenizerPattern(JsonElement pre) {
    if (pre == null || pre.isJsonNull()) return GPT2_PATTERN;
    JsonObject obj = pre.getAsJsonObject();
    String type = obj.get("type").getAsString();
    if ("Sequence".equals(type)) {
      for (JsonElement inner : obj.getAsJsonArray("pretokenizers")) {
        JsonObject p = inner.getAsJsonObject();
        if ("Split".equals(p.get("type").getAsString()) && p.getAsJsonObject("pattern").has("Regex")) {
          return p.getAsJsonObject("pattern").get("Regex").getAsString();
        }
      }
      return GPT2_PATTERN;
    }
    if ("ByteLevel".equals(type)) {
      if (obj.has("add_prefix_space") && obj.get("add_prefix_space").getAsBoolean()) {
        throw new GlassException("ByteLevel with add_prefix_space is not supported", "use a tokenizer without it");
      }
      return GPT2_PATTERN;
    }
    throw new GlassException("unsupported pre-tokenizer " + type, "only byte-level BPE tokenizers are supported");
  }

  /** GPT-2's reversible byte -> printable character map. */
  private void initByteMap() {
    List<Integer> bytes = new ArrayList<>();
    for (int b = '!'; b <= '~'; b++) bytes.add(b);
    for (int b = 0xA1; b <= 0xAC; b++) bytes.add(b);
    for (int b = 0xAE; b <= 0xFF; b++) bytes.add(b);
    List<Integer> chars = new ArrayList<>(bytes);
    int next = 0;
    for (int b = 0; b < 256; b++) {
      if (!bytes.contains(b)) {
        bytes.add(b);
        chars.add(256 + next++);
      }
    }
    for (int i = 0; i < bytes.size(); i++) {
      byteToChar[bytes.get(i)] = String.valueOf((char) (int) chars.get(i));
      charToByte.put((char) (int) chars.get(i), bytes.get(i));
    }
  }

  public long[] encode(String text, Long bos) {
    List<Long> ids = new ArrayList<>();
    if (bos != null) ids.add(bos);
    int start = 0;
    if (specialPattern != null) {
      Matcher special = specialPattern.matcher(text);
      while (special.find()) {
        encodeOrdinary(text.substring(start, special.start()), ids);
        ids.add((long) specialTokens.get(special.group()));
        start = special.end();
      }
    }
    encodeOrdinary(text.substring(start), ids);
    return ids.stream().mapToLong(Long::longValue).toArray();
  }

  private void encodeOrdinary(String text, List<Long> out) {
    Matcher piece = splitPattern.matcher(text);
    while (piece.find()) {
      StringBuilder mapped = new StringBuilder();
      for (byte b : piece.group().getBytes(StandardCharsets.UTF_8)) mapped.append(byteToChar[b & 0xFF]);
      for (String token : bpe(mapped.toString())) {
        Integer id = vocab.get(token);
        if (id == null) throw new GlassException("token " + token + " is not in the vocabulary", "re-export the tokenizer");
        out.add((long) id);
      }
    }
  }

  /** Merges the lowest-ranked adjacent pair until none is left. */
  private List<String> bpe(String word) {
    List<String> parts = new ArrayList<>();
    word.codePoints().forEach(cp -> parts.add(new String(Character.toChars(cp))));
    while (parts.size() > 1) {
      int best = -1;
      int bestRank = Integer.MAX_VALUE;
      for (int i = 0; i < parts.size() - 1; i++) {
        Integer rank = mergeRanks.get(parts.get(i) + " " + parts.get(i + 1));
        if (rank != null && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      parts.set(best, parts.get(best) + parts.get(best + 1));
      parts.remove(best + 1);
    }
    return parts;
  }

  /** Text of the ids, special tokens skipped; incomplete UTF-8 at the end becomes U+FFFD. */
  public String decode(long[] ids) {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    for (long id : ids) {
      if (specialIds.contains((int) id)) continue;
      String token = idToToken.get((int) id);
      if (token == null) throw new GlassException("token id " + id + " is not in the vocabulary", null);
      for (char c : token.toCharArray()) {
        Integer b = charToByte.get(c);
        if (b != null) bytes.write(b);
      }
    }
    return bytes.toString(StandardCharsets.UTF_8);
  }
}
