//! An issued invoice as a PDF (A4), written with `pdf-writer` in the standard Helvetica fonts
//! every PDF reader has (nothing embedded, no browser at run time). Text is WinAnsi-encoded; a
//! character the encoding lacks prints as `?`.

use pdf_writer::{Content, Finish as _, Name, Pdf, Rect, Ref, Str, TextStr};
use tollgate_domain::{Invoice, InvoiceKind, InvoiceStatus, Ticks};

const WIDTH: f32 = 595.0;
const HEIGHT: f32 = 842.0;
const MARGIN: f32 = 56.0;
const LINE: f32 = 15.0;
/// Invoice lines on a page (the first has the header above them).
const ROWS_PER_PAGE: usize = 34;

/// One character in WinAnsi, `?` when it has none.
fn win_ansi(c: char) -> u8 {
    match c {
        '€' => 0x80,
        '‘' => 0x91,
        '’' => 0x92,
        '“' => 0x93,
        '”' => 0x94,
        '•' => 0x95,
        '–' => 0x96,
        '—' => 0x97,
        '−' => b'-',
        ' '..='~' => c as u8,
        c if ('\u{a0}'..='\u{ff}').contains(&c) => c as u8,
        _ => b'?',
    }
}

fn encode(text: &str) -> Vec<u8> {
    text.chars().map(win_ansi).collect()
}

fn usd(amount: Ticks) -> String {
    let cents = amount.to_cents_rounded();
    let sign = if cents < 0 { "-" } else { "" };
    format!(
        "{sign}${}.{:02}",
        cents.unsigned_abs() / 100,
        cents.unsigned_abs() % 100
    )
}

/// Draws text at absolute positions on one page.
struct Page {
    content: Content,
}

impl Page {
    fn new() -> Self {
        Self {
            content: Content::new(),
        }
    }

    fn text(&mut self, x: f32, y: f32, size: f32, bold: bool, text: &str) {
        let font = if bold { Name(b"F2") } else { Name(b"F1") };
        let bytes = encode(text);
        self.content.begin_text();
        self.content.set_font(font, size);
        self.content.next_line(x, y);
        self.content.show(Str(&bytes));
        self.content.end_text();
    }

    fn rule(&mut self, y: f32) {
        self.content.set_line_width(0.5);
        self.content.move_to(MARGIN, y);
        self.content.line_to(WIDTH - MARGIN, y);
        self.content.stroke();
    }
}

/// The invoice's PDF.
#[must_use]
pub fn render(invoice: &Invoice, product: &str) -> Vec<u8> {
    let title = match invoice.kind {
        InvoiceKind::Monthly => format!("Invoice {}", invoice.number),
        InvoiceKind::Receipt => format!("Receipt {}", invoice.number),
        InvoiceKind::CreditNote => format!("Credit note {}", invoice.number),
    };
    let status = match invoice.status {
        InvoiceStatus::Open => "Unpaid",
        InvoiceStatus::Paid => "Paid",
        InvoiceStatus::Failed => "Payment failed",
        InvoiceStatus::Void => "Not charged",
    };
    let mut pages = Vec::new();
    let chunks: Vec<_> = if invoice.lines.is_empty() {
        vec![&invoice.lines[..]]
    } else {
        invoice.lines.chunks(ROWS_PER_PAGE).collect()
    };
    let last = chunks.len() - 1;
    for (index, rows) in chunks.into_iter().enumerate() {
        let mut page = Page::new();
        let mut y = HEIGHT - MARGIN;
        if index == 0 {
            page.text(MARGIN, y, 18.0, true, &title);
            y -= LINE * 1.6;
            page.text(
                MARGIN,
                y,
                10.0,
                false,
                &format!(
                    "{product}   ·   issued {}   ·   {}   ·   {status}",
                    invoice.issued_at.format("%Y-%m-%d"),
                    invoice.month
                ),
            );
            y -= LINE * 2.0;
            page.text(MARGIN, y, 10.0, true, "Billed to");
            y -= LINE;
            let billed = &invoice.billed_to;
            let city = [billed.address.postal_code.as_str(), billed.address.city.as_str()]
                .iter()
                .filter(|part| !part.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            let country = billed.address.country.map(|c| c.to_string()).unwrap_or_default();
            let tax = if billed.tax_number.is_empty() {
                String::new()
            } else {
                format!("{}: {}", billed.tax_id_type, billed.tax_number)
            };
            for line in [
                billed.name.as_str(),
                billed.address.line1.as_str(),
                billed.address.line2.as_str(),
                city.as_str(),
                billed.address.state.as_str(),
                country.as_str(),
                tax.as_str(),
                billed.email.as_str(),
                &format!("Team: {}", invoice.team_name),
            ] {
                if !line.trim().is_empty() {
                    page.text(MARGIN, y, 10.0, false, line);
                    y -= LINE;
                }
            }
            y -= LINE;
        }
        page.text(MARGIN, y, 10.0, true, "Description");
        page.text(340.0, y, 10.0, true, "Units");
        page.text(450.0, y, 10.0, true, "Amount");
        y -= 6.0;
        page.rule(y);
        y -= LINE;
        for line in rows {
            page.text(MARGIN, y, 10.0, false, &line.description);
            page.text(340.0, y, 10.0, false, &line.units.to_string());
            page.text(450.0, y, 10.0, false, &usd(line.amount));
            y -= LINE;
        }
        if index == last {
            page.rule(y + LINE - 4.0);
            y -= LINE * 0.5;
            for (label, amount, bold) in [
                ("Subtotal", usd(invoice.subtotal), false),
                ("Paid from credit", usd(Ticks::new(-invoice.credit_used.get())), false),
                ("Tax", "$0.00".to_owned(), false),
                ("Total", usd(invoice.total), true),
            ] {
                page.text(340.0, y, 10.0, bold, label);
                page.text(450.0, y, 10.0, bold, &amount);
                y -= LINE;
            }
        }
        pages.push(page.content.finish());
    }

    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let page_ids: Vec<Ref> = (0..pages.len()).map(|i| Ref::new(10 + 2 * i as i32)).collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(page_ids.len() as i32);
    for (i, content) in pages.iter().enumerate() {
        let content_id = Ref::new(11 + 2 * i as i32);
        let mut page = pdf.page(page_ids[i]);
        page.media_box(Rect::new(0.0, 0.0, WIDTH, HEIGHT));
        page.parent(tree);
        page.contents(content_id);
        page.resources()
            .fonts()
            .pair(Name(b"F1"), regular)
            .pair(Name(b"F2"), bold);
        page.finish();
        pdf.stream(content_id, content);
    }
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.document_info(info)
        .title(TextStr(&title))
        .producer(TextStr(product));
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_win_ansi() {
        assert_eq!(encode("Café €5 − 東"), b"Caf\xe9 \x805 - ?".to_vec());
        assert_eq!(usd(Ticks::new(-150 * Ticks::PER_CENT)), "-$1.50");
    }
}
