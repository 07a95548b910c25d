package dev.glassexport.core;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Locale;

/**
 * Which Android ABI a native library was built for, read from its ELF header, so that a library
 * pushed for the wrong device gets a message naming both ABIs instead of a linker error.
 */
public final class NativeAbi {
  private NativeAbi() {}

  /** The Android ABI name of an ELF shared library (e.g. "arm64-v8a"), or throws GlassException. */
  public static String ofLibrary(Path library) {
    byte[] header = new byte[20];
    try (InputStream in = Files.newInputStream(library)) {
      if (in.readNBytes(header, 0, header.length) < header.length
          || header[0] != 0x7f || header[1] != 'E' || header[2] != 'L' || header[3] != 'F') {
        throw new GlassException(library + " is not a shared library (no ELF header)", "rebuild it (runtime_ops/README.md)");
      }
    } catch (IOException e) {
      throw new GlassException("cannot read " + library + ": " + e.getMessage(), null, e);
    }
    boolean is64 = header[4] == 2;
    ByteOrder order = header[5] == 2 ? ByteOrder.BIG_ENDIAN : ByteOrder.LITTLE_ENDIAN;
    int machine = ByteBuffer.wrap(header, 18, 2).order(order).getShort() & 0xffff;
    switch (machine) {
      case 183: return "arm64-v8a";
      case 40: return "armeabi-v7a";
      case 62: return "x86_64";
      case 3: return "x86";
      default: return "ELF machine " + machine + (is64 ? " (64-bit)" : " (32-bit)");
    }
  }

  /** The Android ABI name of the running JVM's process. */
  public static String ofThisProcess() {
    String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
    switch (arch) {
      case "aarch64": case "arm64": return "arm64-v8a";
      case "arm": case "armv7l": case "armv7": return "armeabi-v7a";
      case "amd64": case "x86_64": return "x86_64";
      case "x86": case "i386": case "i686": return "x86";
      default: return arch;
    }
  }

  /** Throws a GlassException naming both ABIs when the library cannot run in this process. */
  public static void check(Path library) {
    String built = ofLibrary(library);
    String here = ofThisProcess();
    if (!built.equals(here)) {
      throw new GlassException(
          library.getFileName() + " is built for " + built + ", but this device runs " + here,
          "build runtime_ops for " + here + " (runtime_ops/README.md) and put it in the app's jniLibs/" + here
              + ", or remove it to use the ONNX function fallback");
    }
  }
}
