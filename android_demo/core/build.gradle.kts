// The engine: a plain JVM library (no android.* imports), tested on the host with Maven (pom.xml).
plugins {
    `java-library`
}

java {
    toolchain { languageVersion.set(JavaLanguageVersion.of(17)) }
}

dependencies {
    // ai.onnxruntime: the app supplies it through onnxruntime-android; the host tests through the JVM jar.
    compileOnly("com.microsoft.onnxruntime:onnxruntime:1.29.0")
    implementation("com.google.code.gson:gson:2.11.0")
    testImplementation("com.microsoft.onnxruntime:onnxruntime:1.29.0")
    testImplementation("org.junit.jupiter:junit-jupiter:5.11.3")
}

tasks.test {
    useJUnitPlatform()
    systemProperty("glass.golden", file("../build/golden").absolutePath)
    systemProperty("glass.etHost", file("../jni/build/host.properties").absolutePath)
}
