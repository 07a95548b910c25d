package dev.glassexport.core;

/** A problem with an artifact or an input: what is wrong and how to fix it. Shown as is in the UI. */
public class GlassException extends RuntimeException {
  public GlassException(String problem, String fix) {
    super(fix == null ? problem : problem + " (fix: " + fix + ")");
  }

  public GlassException(String problem, String fix, Throwable cause) {
    super(fix == null ? problem : problem + " (fix: " + fix + ")", cause);
  }
}
