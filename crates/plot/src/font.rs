//! The font PNG plots lay text out with.
//!
//! plotters' bitmap backend needs a TrueType font: DejaVu Sans from Debian's
//! `fonts-dejavu-core` (`DLC_FONT` overrides the path). SVG output names the font and
//! needs none.

use plotters::style::FontStyle;

/// Default font for PNG plots.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers the TrueType font plotters lays text out with (once per process).
pub fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var("DLC_FONT").unwrap_or_else(|_| DEFAULT_FONT.into());
        let bytes = std::fs::read(&path).map_err(|err| {
            format!("PNG plots need a TrueType font: cannot read {path} ({err}); install Debian's fonts-dejavu-core or set DLC_FONT")
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a usable TrueType font"))
    })
    .clone()
}
