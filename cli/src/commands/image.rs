//! `flotilla image ...`: the base disks servers boot from, served by ImageService. The words and
//! flags follow `openstack image ...`. Moving content (upload, save) is in [`transfer`].

mod transfer;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use flotilla_proto::v1::{self, image_service_client::ImageServiceClient};

use super::{all_pages, for_each_name, Ctx, Io};
use crate::args::parse_property;
use crate::client::new_request_id;
use crate::error::CliError;
use crate::output;
use crate::transfer::{open_source, parse_checksum, wants_progress, Checksum, Download, Verified};
use crate::views::image::{ImageLongView, ImageMemberView, ImageView};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Create an image. With --file, upload its content too; without, it stays queued until
    /// `image upload`.
    Create(CreateArgs),
    /// Upload the content of a queued image.
    Upload(UploadArgs),
    /// Download an image's content into a file (`-` = standard output), checking its sha256.
    Save(SaveArgs),
    /// List the images you can use (all pages).
    List(ListArgs),
    /// Show one image.
    Show {
        /// Image id or name.
        image: String,
    },
    /// Change an image's name, minimums, protection, visibility or properties.
    Set(SetArgs),
    /// Remove properties from an image.
    Unset(UnsetArgs),
    /// Delete one or more images.
    Delete {
        /// Image ids or names.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Share an image (visibility `shared`) with a project.
    #[command(subcommand)]
    Add(AddCmd),
    /// Stop sharing an image with a project.
    #[command(subcommand)]
    Remove(RemoveCmd),
    /// The projects an image is shared with.
    #[command(subcommand)]
    Member(MemberCmd),
}

#[derive(Debug, Subcommand)]
pub enum AddCmd {
    /// Share IMAGE with PROJECT (the image's visibility must be `shared`).
    Project {
        /// Image id or name.
        image: String,
        /// Project id or name.
        project: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RemoveCmd {
    /// Stop sharing IMAGE with PROJECT.
    Project {
        /// Image id or name.
        image: String,
        /// Project id or name.
        project: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCmd {
    /// List the projects an image is shared with.
    List {
        /// Image id or name.
        image: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskFormat {
    Qcow2,
    Raw,
    Vmdk,
    Vdi,
    Vhd,
    Vhdx,
    Iso,
}

impl From<DiskFormat> for v1::ImageDiskFormat {
    fn from(f: DiskFormat) -> Self {
        match f {
            DiskFormat::Qcow2 => v1::ImageDiskFormat::Qcow2,
            DiskFormat::Raw => v1::ImageDiskFormat::Raw,
            DiskFormat::Vmdk => v1::ImageDiskFormat::Vmdk,
            DiskFormat::Vdi => v1::ImageDiskFormat::Vdi,
            DiskFormat::Vhd => v1::ImageDiskFormat::Vhd,
            DiskFormat::Vhdx => v1::ImageDiskFormat::Vhdx,
            DiskFormat::Iso => v1::ImageDiskFormat::Iso,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainerFormat {
    Bare,
    Ovf,
    Ova,
}

impl From<ContainerFormat> for v1::ImageContainerFormat {
    fn from(f: ContainerFormat) -> Self {
        match f {
            ContainerFormat::Bare => v1::ImageContainerFormat::Bare,
            ContainerFormat::Ovf => v1::ImageContainerFormat::Ovf,
            ContainerFormat::Ova => v1::ImageContainerFormat::Ova,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Queued,
    Saving,
    Active,
    Killed,
}

impl From<StatusFilter> for v1::ImageStatus {
    fn from(s: StatusFilter) -> Self {
        match s {
            StatusFilter::Queued => v1::ImageStatus::Queued,
            StatusFilter::Saving => v1::ImageStatus::Saving,
            StatusFilter::Active => v1::ImageStatus::Active,
            StatusFilter::Killed => v1::ImageStatus::Killed,
        }
    }
}

/// Who may see and boot an image (at most one).
#[derive(Debug, Clone, Default, Args)]
#[group(id = "visibility", multiple = false)]
pub struct VisibilityFlags {
    /// Every project can see and boot it (admins only).
    #[arg(long)]
    pub public: bool,
    /// Only the owner project.
    #[arg(long)]
    pub private: bool,
    /// The owner project and the projects added with `image add project`.
    #[arg(long)]
    pub shared: bool,
}

/// Which images to list by visibility (at most one).
#[derive(Debug, Clone, Default, Args)]
#[group(id = "visibility_filter", multiple = false)]
pub struct VisibilityFilter {
    /// Only public images.
    #[arg(long)]
    pub public: bool,
    /// Only private images.
    #[arg(long)]
    pub private: bool,
    /// Only shared images.
    #[arg(long)]
    pub shared: bool,
}

/// `UNSPECIFIED` when no flag is given (create: private; set: unchanged; list: any).
fn visibility(public: bool, private: bool, shared: bool) -> v1::ImageVisibility {
    match (public, private, shared) {
        (true, _, _) => v1::ImageVisibility::Public,
        (_, true, _) => v1::ImageVisibility::Private,
        (_, _, true) => v1::ImageVisibility::Shared,
        _ => v1::ImageVisibility::Unspecified,
    }
}

impl VisibilityFlags {
    pub fn get(&self) -> v1::ImageVisibility {
        visibility(self.public, self.private, self.shared)
    }
}

impl VisibilityFilter {
    pub fn get(&self) -> v1::ImageVisibility {
        visibility(self.public, self.private, self.shared)
    }
}

/// Deletion protection (at most one).
#[derive(Debug, Clone, Default, Args)]
#[group(id = "protection", multiple = false)]
pub struct ProtectionFlags {
    /// The image cannot be deleted until `--unprotected` is set.
    #[arg(long)]
    pub protected: bool,
    /// The image can be deleted.
    #[arg(long)]
    pub unprotected: bool,
}

impl ProtectionFlags {
    /// `None` when neither flag is given.
    pub fn get(&self) -> Option<bool> {
        match (self.protected, self.unprotected) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image name (unique among the images a project can see).
    pub name: String,
    /// Upload this file as the image's content right after creating it.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Format of the disk content; checked against the uploaded bytes.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = DiskFormat::Qcow2)]
    pub disk_format: DiskFormat,
    /// Container around the disk (`bare`: the disk image alone).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = ContainerFormat::Bare)]
    pub container_format: ContainerFormat,
    #[command(flatten)]
    pub visibility: VisibilityFlags,
    /// Smallest root disk a server booting it may have, in GiB (0 = none).
    #[arg(long, value_name = "GIB", default_value_t = 0)]
    pub min_disk: u64,
    /// Smallest memory a server booting it may have, in MiB (0 = none).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub min_ram: u64,
    #[command(flatten)]
    pub protection: ProtectionFlags,
    /// Property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Expected digest of the file: sha256 (64 hex digits) or md5 (32).
    #[arg(long, value_name = "HEX", value_parser = parse_checksum, requires = "file")]
    pub checksum: Option<Checksum>,
    /// Owner project, id or name (admins only; default: the token's project).
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
    /// Draw no progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// Image id or name (must be queued).
    pub image: String,
    /// File to upload.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Expected digest of the file: sha256 (64 hex digits) or md5 (32).
    #[arg(long, value_name = "HEX", value_parser = parse_checksum)]
    pub checksum: Option<Checksum>,
    /// Draw no progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Image id or name (must be active).
    pub image: String,
    /// Where to write the content (`-` = standard output). Written to FILE.part first and
    /// renamed once its sha256 matches.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Draw no progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub visibility: VisibilityFilter,
    /// Only images owned by this project (id or name).
    #[arg(long, value_name = "PROJECT")]
    pub owner: Option<String>,
    /// Only images in this status.
    #[arg(long, value_enum, value_name = "STATUS")]
    pub status: Option<StatusFilter>,
    /// Only images with exactly this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// More columns (formats, size, visibility, protection, owner).
    #[arg(long)]
    pub long: bool,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args([
            "name", "min_disk", "min_ram", "protected", "unprotected", "public", "private",
            "shared", "properties",
        ])
))]
pub struct SetArgs {
    /// Image id or name.
    pub image: String,
    /// New name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// New minimum root disk in GiB (0 = none).
    #[arg(long, value_name = "GIB")]
    pub min_disk: Option<u64>,
    /// New minimum memory in MiB (0 = none).
    #[arg(long, value_name = "MIB")]
    pub min_ram: Option<u64>,
    #[command(flatten)]
    pub protection: ProtectionFlags,
    #[command(flatten)]
    pub visibility: VisibilityFlags,
    /// Add or overwrite property KEY=VALUE (repeatable).
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct UnsetArgs {
    /// Image id or name.
    pub image: String,
    /// Property KEY to remove (repeatable).
    #[arg(long = "property", value_name = "KEY", required = true)]
    pub properties: Vec<String>,
}

/// Whether this run draws progress bars on stderr.
fn progress(ctx: &Ctx, no_progress: bool) -> bool {
    wants_progress(no_progress, ctx.format, std::io::stderr().is_terminal())
}

fn show(ctx: &Ctx, io: &mut Io<'_>, image: v1::Image) -> Result<(), CliError> {
    io.print(&output::show(ctx.format, &ImageView::from(image))?)
}

pub async fn run(cmd: ImageCmd, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let conn = &ctx.conn;
    match cmd {
        ImageCmd::Create(a) => {
            // Refuse a missing or unreadable file before creating anything.
            if let Some(path) = &a.file {
                open_source(path)?;
            }
            let request = v1::CreateImageRequest {
                request_id: new_request_id(),
                name: a.name,
                disk_format: v1::ImageDiskFormat::from(a.disk_format) as i32,
                container_format: v1::ImageContainerFormat::from(a.container_format) as i32,
                visibility: a.visibility.get() as i32,
                min_disk_gib: a.min_disk,
                min_ram_mib: a.min_ram,
                protected: a.protection.get().unwrap_or(false),
                properties: a.properties.into_iter().collect(),
                owner: a.project.unwrap_or_default(),
            };
            let image = conn
                .call(request, |ch, req| async move {
                    ImageServiceClient::new(ch).create_image(req).await
                })
                .await?;
            let image = match a.file {
                None => image,
                Some(path) => {
                    let upload = transfer::Upload {
                        image: image.id,
                        path,
                        checksum: a.checksum,
                        progress: progress(ctx, a.no_progress),
                    };
                    transfer::upload(conn, upload).await?
                }
            };
            show(ctx, io, image)
        }
        ImageCmd::Upload(a) => {
            let upload = transfer::Upload {
                image: a.image,
                path: a.file,
                checksum: a.checksum,
                progress: progress(ctx, a.no_progress),
            };
            let image = transfer::upload(conn, upload).await?;
            show(ctx, io, image)
        }
        ImageCmd::Save(a) => save(a, ctx, io).await,
        ImageCmd::List(a) => {
            let base = v1::ListImagesRequest {
                visibility: a.visibility.get() as i32,
                owner: a.owner.unwrap_or_default(),
                status: a.status.map_or(v1::ImageStatus::Unspecified, Into::into) as i32,
                name: a.name.unwrap_or_default(),
                page_size: 0,
                page_token: String::new(),
                stale: ctx.stale,
            };
            let images = all_pages(|page_token| {
                let request = v1::ListImagesRequest {
                    page_token,
                    ..base.clone()
                };
                async move {
                    let page = conn
                        .call(request, |ch, req| async move {
                            ImageServiceClient::new(ch).list_images(req).await
                        })
                        .await?;
                    Ok((page.images, page.next_page_token))
                }
            })
            .await?;
            let views = images.into_iter().map(ImageView::from);
            let text = if a.long {
                output::list(ctx.format, &views.map(ImageLongView).collect::<Vec<_>>())?
            } else {
                output::list(ctx.format, &views.collect::<Vec<_>>())?
            };
            io.print(&text)
        }
        ImageCmd::Show { image } => {
            let request = v1::GetImageRequest {
                image,
                stale: ctx.stale,
            };
            let image = conn
                .call(request, |ch, req| async move {
                    ImageServiceClient::new(ch).get_image(req).await
                })
                .await?;
            show(ctx, io, image)
        }
        ImageCmd::Set(a) => {
            let request = v1::UpdateImageRequest {
                request_id: new_request_id(),
                image: a.image,
                name: a.name,
                min_disk_gib: a.min_disk,
                min_ram_mib: a.min_ram,
                protected: a.protection.get(),
                visibility: a.visibility.get() as i32,
                set_properties: a.properties.into_iter().collect(),
                unset_properties: Vec::new(),
            };
            update(ctx, io, request).await
        }
        ImageCmd::Unset(a) => {
            let request = v1::UpdateImageRequest {
                request_id: new_request_id(),
                image: a.image,
                unset_properties: a.properties,
                ..Default::default()
            };
            update(ctx, io, request).await
        }
        ImageCmd::Delete { images } => {
            for_each_name(images, "cannot delete image", io, |image| async move {
                // One request id per image, reused by that deletion's retries.
                let request = v1::DeleteImageRequest {
                    request_id: new_request_id(),
                    image,
                };
                conn.call(request, |ch, req| async move {
                    ImageServiceClient::new(ch).delete_image(req).await
                })
                .await?;
                Ok(())
            })
            .await
        }
        ImageCmd::Add(AddCmd::Project { image, project }) => {
            let request = v1::AddImageMemberRequest {
                request_id: new_request_id(),
                image,
                project,
            };
            let member = conn
                .call(request, |ch, req| async move {
                    ImageServiceClient::new(ch).add_image_member(req).await
                })
                .await?;
            io.print(&output::show(ctx.format, &ImageMemberView::from(member))?)
        }
        ImageCmd::Remove(RemoveCmd::Project { image, project }) => {
            let request = v1::RemoveImageMemberRequest {
                request_id: new_request_id(),
                image,
                project,
            };
            conn.call(request, |ch, req| async move {
                ImageServiceClient::new(ch).remove_image_member(req).await
            })
            .await?;
            Ok(())
        }
        ImageCmd::Member(MemberCmd::List { image }) => {
            let stale = ctx.stale;
            let members = all_pages(|page_token| {
                let request = v1::ListImageMembersRequest {
                    image: image.clone(),
                    page_size: 0,
                    page_token,
                    stale,
                };
                async move {
                    let page = conn
                        .call(request, |ch, req| async move {
                            ImageServiceClient::new(ch).list_image_members(req).await
                        })
                        .await?;
                    Ok((page.members, page.next_page_token))
                }
            })
            .await?;
            let views: Vec<ImageMemberView> = members.into_iter().map(Into::into).collect();
            io.print(&output::list(ctx.format, &views)?)
        }
    }
}

async fn update(
    ctx: &Ctx,
    io: &mut Io<'_>,
    request: v1::UpdateImageRequest,
) -> Result<(), CliError> {
    let image = ctx
        .conn
        .call(request, |ch, req| async move {
            ImageServiceClient::new(ch).update_image(req).await
        })
        .await?;
    show(ctx, io, image)
}

/// `image save`: nothing on stdout unless `--file -` (then only the content).
async fn save(a: SaveArgs, ctx: &Ctx, io: &mut Io<'_>) -> Result<(), CliError> {
    let show_progress = progress(ctx, a.no_progress);
    let to_stdout = a.file.as_os_str() == "-";
    let mut download = if to_stdout {
        Download::to_writer(&mut *io.out)
    } else {
        Download::to_file(&a.file)?
    };
    let expected = match transfer::download(&ctx.conn, &a.image, &mut download, show_progress).await
    {
        Ok(expected) => expected,
        Err(e) => {
            download.discard();
            return Err(e);
        }
    };
    if download.finish(&expected)? == Verified::Unchecked {
        writeln!(
            io.err,
            "flotilla: warning: image {} has no sha256; only its size was checked",
            a.image
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
