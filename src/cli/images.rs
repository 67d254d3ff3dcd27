//! `podkeeper image ...`: list, pull, import and remove images through the
//! agent, which does the work with containerd's services.

use anyhow::Context;
use clap::Subcommand;

use super::{connect, human_duration, rpc_error, table, ClientFlags};
use crate::proto;

#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// List images
    Ls,
    /// Pull an image from its registry
    Pull { reference: String },
    /// Import image archives (OCI layout or docker save; plain, gzip or zstd)
    Import {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Remove an image (refused while a pod uses it)
    Rm { reference: String },
}

pub async fn run(flags: &ClientFlags, command: &ImageCommand) -> anyhow::Result<()> {
    let mut client = connect(flags).await?;
    match command {
        ImageCommand::Ls => {
            let images = client
                .list_images(proto::ListImagesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner()
                .images;
            let now = jiff::Timestamp::now();
            let mut rows = vec![["IMAGE", "DIGEST", "SIZE", "AGE", "USED BY"]
                .map(String::from)
                .to_vec()];
            for image in images {
                let age = image
                    .created
                    .parse::<jiff::Timestamp>()
                    .map(|t| human_duration(now.duration_since(t)))
                    .unwrap_or_else(|_| "<unknown>".into());
                let digest = image
                    .digest
                    .strip_prefix("sha256:")
                    .unwrap_or(&image.digest);
                rows.push(vec![
                    image.name,
                    digest.chars().take(12).collect(),
                    human_size(image.size),
                    age,
                    if image.used_by.is_empty() {
                        "<none>".into()
                    } else {
                        image.used_by.join(",")
                    },
                ]);
            }
            print!("{}", table(&rows));
        }
        ImageCommand::Pull { reference } => {
            let image = client
                .pull_image(proto::PullImageRequest {
                    reference: reference.clone(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "{} {} ({})",
                image.name,
                image.digest,
                human_size(image.size)
            );
        }
        ImageCommand::Import { files } => {
            let mut paths = Vec::new();
            for file in files {
                let path =
                    std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
                paths.push(path.display().to_string());
            }
            let names = client
                .import_images(proto::ImportImagesRequest { paths })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .names;
            for name in names {
                println!("imported {name}");
            }
        }
        ImageCommand::Rm { reference } => {
            client
                .remove_image(proto::RemoveImageRequest {
                    reference: reference.clone(),
                })
                .await
                .map_err(rpc_error)?;
            println!("removed {reference}");
        }
    }
    Ok(())
}

/// Sizes as kubectl-adjacent tools print them: decimal units, one decimal.
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(2_140_160), "2.1MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }
}
