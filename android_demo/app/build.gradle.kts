plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

// ExecuTorch artifacts run through our JNI bridge (../jni), built by the NDK against an ExecuTorch
// install compiled from source for arm64-v8a: pass -Pglass.executorchRoot=<install prefix> (README).
// Without it the app builds for ONNX artifacts only (ExecuTorchBackend then says the bridge is missing).
val executorchRoot: String? = providers.gradleProperty("glass.executorchRoot").orNull

android {
    namespace = "dev.glassexport.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.glassexport.demo"
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a") }
        if (executorchRoot != null) {
            externalNativeBuild { cmake { arguments += listOf("-DEXECUTORCH_ROOT=$executorchRoot", "-DANDROID_STL=c++_shared") } }
        }
    }
    if (executorchRoot != null) {
        // ../jni/CMakeLists.txt needs CMake >= 3.28 (sdkmanager "cmake;3.31.6", or cmake.dir in local.properties)
        externalNativeBuild { cmake { path = file("../jni/CMakeLists.txt"); version = "3.31.6" } }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
}

dependencies {
    implementation(project(":core"))
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.29.0")
    // The screen's tests (src/test/kotlin) run on the host through pom.xml (Robolectric + the onnxruntime
    // JVM jar, whose classes clash with the AAR's here); Gradle unit tests are not set up.
}
