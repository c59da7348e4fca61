// swift-tools-version:5.7
// Swift binding of libcmdop. Needs libcmdop installed where pkg-config
// finds it (`make install` in the libcmdop repository; set PKG_CONFIG_PATH
// for a non-standard prefix).
import PackageDescription

let package = Package(
    name: "Cmdop",
    platforms: [.macOS(.v10_15), .iOS(.v13)],
    products: [
        .library(name: "Cmdop", targets: ["Cmdop"]),
    ],
    targets: [
        // The C API: a module map over cmdop.h; flags come from cmdop.pc.
        .systemLibrary(name: "CCmdop", path: "Sources/CCmdop", pkgConfig: "cmdop"),
        .target(name: "Cmdop", dependencies: ["CCmdop"]),
        .testTarget(name: "CmdopTests", dependencies: ["Cmdop"]),
    ]
)
