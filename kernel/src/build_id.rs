//! The kernel's identity: the build id and source commit that xtask writes into the image after linking.
use crate::reserved::Reserved;
use portable::build_id::{BuildId, BuildInfo, CAPACITY};

#[used]
#[unsafe(link_section = ".klp_build_id")]
static KERNEL_BUILD_ID: Reserved<CAPACITY> = Reserved::zeroed();

/// The build id and commit, if xtask filled them (an image linked by cargo alone has none).
pub fn info() -> Option<BuildInfo<'static>> {
    BuildInfo::parse(KERNEL_BUILD_ID.bytes())
}

/// The build id alone: what a patch's `build-id` line is checked against.
pub fn id() -> Option<BuildId> {
    info().map(|info| info.id)
}

/// What the kernel says of itself when xtask did not fill the section.
pub const NONE: &str = "build-id none (image not filled by xtask)";

/// How the kernel names itself: `build-id HEX commit COMMIT[-dirty]`, or that it has none.
pub fn describe() -> alloc::string::String {
    match info() {
        Some(info) => alloc::format!("{info}"),
        None => alloc::string::String::from(NONE),
    }
}
